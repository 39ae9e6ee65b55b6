"""The parameters every data stage that works document by document shares:
worker processes, batch size and checkpoint shard size.  All three are run
settings (``recipe_runner.run_setting``): each document is judged, hashed or
encoded on its own, and the output is written in batches cut by the rows
alone, so none of them changes a byte of the output, and none is part of the
stage's key."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

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


class LocalExecutor(BaseModel):
    """The shards run in this machine's fork pool (``num_proc`` workers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["local"] = Field(default="local", description="This machine's pool of forked worker processes.")


class RayExecutor(BaseModel):
    """The shards run as Ray tasks (``pip install "recipe-runner[ray]"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["ray"] = Field(description="Each shard is a Ray task.")
    address: str | None = Field(
        None,
        description=(
            "The Ray cluster: 'auto' (a running cluster, as `ray start` makes; an error if none), "
            "'ray://host:port' (Ray Client) or 'host:port' (the head's GCS), or null: $RAY_ADDRESS when set, "
            "else a cluster running on this machine, else a local Ray instance started for the run."
        ),
    )
    num_cpus: float = Field(
        1, gt=0, le=1024, allow_inf_nan=False, description="CPUs Ray reserves for each shard's task."
    )


Executor = Annotated[LocalExecutor | RayExecutor, Field(discriminator="type")]


def executor_field() -> Any:
    return run_setting(
        LocalExecutor(),
        description=(
            "Where the shards run: {type: local} (this machine's fork pool of num_proc workers) or {type: ray, "
            "address: auto | 'ray://host:port' | null, num_cpus: per task} (each shard a Ray task on a cluster "
            "whose nodes share the run directory; num_proc does not apply). The shard store, resume and "
            "output are the same. A run setting: it does not change the output."
        ),
    )
