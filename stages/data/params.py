"""The parameters every data stage that works document by document shares:
worker processes, batch size and checkpoint shard size."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .workers import AUTO_PARALLEL_MIN_BYTES, AUTO_PARALLEL_MIN_BYTES_COSTLY, MAX_AUTO_PROCS

NumProc = Literal["auto"] | int


def num_proc_field(default: NumProc = "auto") -> Any:
    return Field(
        default,
        description=(
            "Worker processes for the per-document work: an integer, or 'auto' (all usable cores, "
            f"at most {MAX_AUTO_PROCS}, once the input holds {AUTO_PARALLEL_MIN_BYTES // 2**20} MiB of text, "
            f"or {AUTO_PARALLEL_MIN_BYTES_COSTLY // 2**20} MiB for costly per-document work such as language "
            "ID; one process below that, where starting workers costs more than it saves)."
        ),
    )


def batch_size_field(default: int = 1000) -> Any:
    return Field(default, ge=1, description="Documents per batch handed to the batched (Arrow) passes.")


def shard_size_field(default: int = 50_000) -> Any:
    return Field(
        default,
        ge=1,
        description=(
            "At most this many documents per checkpoint shard (filter, dedup and tokenize also cut shards "
            "by bytes of text, so workers stay balanced). Each finished shard is kept in the stage's "
            "checkpoint directory, so a run that is killed midway redoes only the unfinished shards."
        ),
    )
