"""How a data stage cuts its input into checkpoint shards: contiguous row
ranges with few enough rows and bytes of text that the workers stay balanced
and a killed run loses little (:func:`plan_dataset`), or plain ranges of rows
(:func:`shard_ranges`, for the pack stage's sequential pass)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from recipe_runner import Artifact, Params, StageContext

from .arrow_io import row_ranges
from .params import Executor, LocalExecutor, NumProc
from .shard_store import ShardStore, artifact_identity, result_params
from .workers import AUTO_PARALLEL_MIN_BYTES, MAX_AUTO_PROCS, resolve_num_proc

#: part of the shard stores' keys: stores made with another shard layout start over
SHARD_LAYOUT = "bytes-2"
#: shards aimed at per input: 8 for each of the most workers 'auto' starts (fewer and the last one
#: decides the wall time); a fixed number, so the layout does not depend on the worker count
TARGET_SHARDS = 8 * MAX_AUTO_PROCS
MIN_SHARD_BYTES = 1 * 2**20
MAX_SHARD_BYTES = 64 * 2**20


@dataclass
class ShardPlan:
    """The shards of one stage run: the input tables by split, the shards
    ``(name, split, first_row, end_row)`` in order, the worker count and
    where the shards run (a run setting, as the worker count)."""

    tables: dict[str, Any]
    shards: list[tuple[str, str, int, int]]
    num_proc: int
    rows: int
    executor: Executor = field(default_factory=LocalExecutor)

    def names(self, split: str | None = None) -> list[str]:
        """Shard names in row order (of one split, or of all splits in order)."""
        return [name for name, s, _, _ in self.shards if split is None or s == split]


def plan_dataset(
    dd: Any,
    column: str,
    shard_size: int,
    num_proc: NumProc,
    min_bytes: int = AUTO_PARALLEL_MIN_BYTES,
    executor: Executor | None = None,
) -> ShardPlan:
    """Resolve ``num_proc`` for a DatasetDict and plan its shards by bytes of
    ``column``; ``executor`` (default: local) says where :func:`map_shards` runs them."""
    tables = {split: base_table(ds) for split, ds in dd.items()}
    rows = sum(len(ds) for ds in dd.values())
    nproc = resolve_num_proc(num_proc, sum(table_nbytes(ds) for ds in dd.values()), rows, min_bytes=min_bytes)
    shards = [
        (f"{split}-{a:010d}-{b:010d}", split, a, b)
        for split, t in tables.items()
        for a, b in plan_shards(t, column, shard_size)
    ]
    return ShardPlan(tables, shards, nproc, rows, executor or LocalExecutor())


def plan_shards(table: Any, column: str, shard_size: int) -> list[tuple[int, int]]:
    """Contiguous row ranges of at most ``shard_size`` rows and, where one
    document allows it, about ``total_bytes / TARGET_SHARDS`` bytes of
    ``column`` (1 to 64 MiB).  The worker count plays no part, so a run
    resumed with another ``num_proc`` finds the same shards."""
    import numpy as np
    import pyarrow.compute as pc

    n = table.num_rows
    if n == 0:
        return [(0, 0)]
    lens = pc.binary_length(table.column(column)).fill_null(0).to_numpy()
    cum = np.cumsum(lens, dtype=np.int64)
    target = int(min(max(cum[-1] / TARGET_SHARDS, MIN_SHARD_BYTES), MAX_SHARD_BYTES))
    return row_ranges(cum, shard_size, target)


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of at most ``shard_size`` rows covering ``n`` rows (one empty range for none)."""
    if n == 0:
        return [(0, 0)]
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def base_table(ds: Any) -> Any:
    """The pyarrow Table holding a Dataset's rows, in order."""
    if getattr(ds, "_indices", None) is not None:  # a select()ed view: materialise its rows
        return ds.with_format("arrow")[:]
    return ds.data.table


def table_nbytes(ds: Any) -> int:
    """Bytes of the Arrow data behind a Dataset (a slice counts only its rows)."""
    try:
        return int(ds.data.nbytes)
    except Exception:  # pragma: no cover - defensive: a size estimate must never fail a stage
        return 0


def open_shard_store(
    ctx: StageContext[Any],
    stage: str,
    version: str,
    params: Params,
    art: Artifact,
    *,
    exclude: Collection[str] = (),
    **key: Any,
) -> ShardStore:
    """The stage's store of the shards :func:`plan_dataset` plans, under
    ``<checkpoint dir>/<stage>-shards``.  Its key: the stage, its version, the
    shard layout, the parameters but the run settings and ``exclude`` (what
    changes only the use of the shards, such as dedup's LSH threshold), the
    input's identity and whatever else ``key`` names."""
    content = {
        "stage": stage,
        "v": version,
        "layout": SHARD_LAYOUT,
        "params": result_params(params, exclude),
        "input": artifact_identity(art),
        **key,
    }
    return ShardStore(ctx.checkpoint_dir / f"{stage}-shards", content, ctx.log)
