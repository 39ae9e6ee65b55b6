"""The parameters every data stage that works document by document shares:
worker processes, batch size and checkpoint shard size.  All three are run
settings (``recipe_runner.run_setting``): each document is judged, hashed or
encoded on its own, and the output is written in batches cut by the rows
alone, so none of them changes a byte of the output, and none is part of the
stage's key."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator

from recipe_runner import run_setting

from .workers import AUTO_PARALLEL_MIN_BYTES, AUTO_PARALLEL_MIN_BYTES_COSTLY, MAX_AUTO_PROCS

#: more worker processes than any machine has cores
MAX_NUM_PROC = 1024
#: documents per batch beyond which a batch is a whole corpus held in memory
MAX_BATCH_SIZE = 1_000_000


def _check_num_proc(value: Literal["auto"] | int) -> Literal["auto"] | int:
    if value != "auto" and not 1 <= value <= MAX_NUM_PROC:
        raise ValueError(f"num_proc must be 'auto' or an integer from 1 to {MAX_NUM_PROC}")
    return value


NumProc = Annotated[Literal["auto"] | int, AfterValidator(_check_num_proc)]

NUM_PROC_DESCRIPTION = (
    "Worker processes for the per-document work: an integer from 1, or 'auto' (all usable cores, "
    f"at most {MAX_AUTO_PROCS}, once the input holds {AUTO_PARALLEL_MIN_BYTES // 2**20} MiB of text, "
    f"or {AUTO_PARALLEL_MIN_BYTES_COSTLY // 2**20} MiB for costly per-document work such as language "
    "ID; one process below that, where starting workers costs more than it saves). A run setting: "
    "it does not change the output."
)


def num_proc_field(default: NumProc = "auto", description: str = NUM_PROC_DESCRIPTION) -> Any:
    return run_setting(default, description=description)


def batch_size_field(default: int = 1000) -> Any:
    return run_setting(
        default,
        ge=1,
        le=MAX_BATCH_SIZE,
        description="Documents per batch handed to the batched (Arrow) passes. A run setting: it does not change "
        "the output.",
    )


def shard_size_field(default: int = 50_000) -> Any:
    return run_setting(
        default,
        ge=1,
        description=(
            "At most this many documents per checkpoint shard (shards are also cut by bytes of text, so "
            "workers stay balanced). Each finished shard is kept in the stage's checkpoint directory, so a "
            "run that is killed midway redoes only the unfinished shards. A run setting: it does not change "
            "the output."
        ),
    )
