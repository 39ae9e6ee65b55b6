"""Per-document work over a dataset's shards, in forked worker processes.

A stage plans contiguous row ranges (:func:`plan_shards`: few enough rows and
bytes of text that the workers stay balanced and a killed run loses little),
then :func:`map_shards` runs ``fn(table_slice, tmpdir, **kwargs) -> meta`` on
each range not already finished in the stage's :class:`ShardStore`:

- in this process when one process is asked for, one shard is left, or the
  platform is not Linux (fork is unsafe on macOS and missing on Windows);
- else in a pool of forked workers, which inherit the memory-mapped input
  tables and anything the stage built beforehand (a fastText model, the
  filters) without pickling or reloading them, and write their results
  straight into the shard's temporary directory.  Only the small ``meta``
  dict comes back.

A shard is committed (renamed into place) as soon as its worker is done, so a
failure or a kill keeps every finished shard for the next run.  A worker that
dies (killed, out of memory) breaks the pool with an error instead of a hang.
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from recipe_runner.stage import StageError

from ._util import AUTO_PARALLEL_MIN_BYTES, NumProc, resolve_num_proc, table_nbytes

#: part of the shard stores' keys: stores made with another shard layout start over
SHARD_LAYOUT = "bytes-1"
#: shards aimed at per worker (fewer and the last one decides the wall time)
SHARDS_PER_PROC = 8
MIN_SHARD_BYTES = 1 * 2**20
MAX_SHARD_BYTES = 64 * 2**20

# the tables of the running map, inherited by the forked workers
_FORKED: dict[str, Any] = {}
_PARENT: list[int] = []  # the pid that forked them


def base_table(ds: Any) -> Any:
    """The pyarrow Table holding a Dataset's rows, in order."""
    if getattr(ds, "_indices", None) is not None:  # a select()ed view: materialise its rows
        return ds.with_format("arrow")[:]
    return ds.data.table


def plan_shards(table: Any, column: str, shard_size: int, num_proc: int) -> list[tuple[int, int]]:
    """Contiguous row ranges of at most ``shard_size`` rows and, where one
    document allows it, about ``total_bytes / (SHARDS_PER_PROC * num_proc)``
    bytes of ``column`` (1 to 64 MiB; 64 MiB for one process)."""
    import numpy as np
    import pyarrow.compute as pc

    n = table.num_rows
    if n == 0:
        return [(0, 0)]
    lens = pc.binary_length(table.column(column)).fill_null(0).to_numpy()
    cum = np.cumsum(lens, dtype=np.int64)
    target = MAX_SHARD_BYTES if num_proc <= 1 else \
        int(min(max(cum[-1] / (SHARDS_PER_PROC * num_proc), MIN_SHARD_BYTES), MAX_SHARD_BYTES))
    ranges = []
    a = 0
    while a < n:
        base = int(cum[a - 1]) if a else 0
        b = int(np.searchsorted(cum, base + target, side="right"))
        b = min(max(b, a + 1), a + shard_size, n)
        ranges.append((a, b))
        a = b
    return ranges


@dataclass
class ShardPlan:
    """The shards of one stage run: the input tables by split, the shards
    ``(name, split, first_row, end_row)`` in order, and the worker count."""

    tables: dict[str, Any]
    shards: list[tuple[str, str, int, int]]
    num_proc: int
    rows: int

    def names(self, split: str | None = None) -> list[str]:
        """Shard names in row order (of one split, or of all splits in order)."""
        return [name for name, s, _, _ in self.shards if split is None or s == split]


def plan_dataset(dd: Any, column: str, shard_size: int, num_proc: NumProc,
                 min_bytes: int = AUTO_PARALLEL_MIN_BYTES) -> ShardPlan:
    """Resolve ``num_proc`` for a DatasetDict and plan its shards by bytes of ``column``."""
    tables = {split: base_table(ds) for split, ds in dd.items()}
    rows = sum(len(ds) for ds in dd.values())
    nproc = resolve_num_proc(num_proc, sum(table_nbytes(ds) for ds in dd.values()), rows, min_bytes=min_bytes)
    shards = [(f"{split}-{a:010d}-{b:010d}", split, a, b) for split, t in tables.items()
              for a, b in plan_shards(t, column, shard_size, nproc)]
    return ShardPlan(tables, shards, nproc, rows)


def _run_job(job: tuple) -> dict[str, Any]:
    fn, split, a, b, tmp, kwargs = job
    Path(tmp).mkdir(parents=True)
    return fn(_FORKED[split].slice(a, b - a), Path(tmp), **kwargs) or {}


def pool_size(num_proc: int) -> int:
    """Worker processes :func:`map_shards` uses for ``num_proc``: fork is what
    lets the workers share the loaded state, and off Linux (macOS, Windows) it
    is unsafe or missing, so there the shards run in this process."""
    return max(1, num_proc) if sys.platform.startswith("linux") else 1


def in_worker() -> bool:
    """True inside a worker process forked by :func:`map_shards`."""
    return bool(_PARENT) and os.getpid() != _PARENT[0]


def _child_init() -> None:
    """Set up a forked worker:

    - it dies with its parent (a parent killed outright would otherwise leave
      idle workers holding its inherited file descriptors, the run lock too);
    - SIGTERM ends it at once and SIGINT is the parent's to handle (the
      runner's handlers, inherited, would turn them into exceptions the pool
      catches, and the worker would go on to its next shard);
    - it logs through plain handlers (:func:`_plain_logging`)."""
    import ctypes
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass
    if _PARENT and os.getppid() != _PARENT[0]:  # the parent died before prctl
        os._exit(1)
    _plain_logging()


def _plain_logging() -> None:
    """Swap rich log handlers for plain stderr ones: in a forked worker, a rich
    handler's console lock may have been held by the parent's display thread
    at the moment of the fork, and no thread in the child would release it."""
    import logging

    for name in (None, "recipe_runner"):
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if type(h).__module__.split(".")[0] == "rich":
                plain = logging.StreamHandler(sys.stderr)
                plain.setLevel(h.level)
                plain.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S"))
                logger.removeHandler(h)
                logger.addHandler(plain)


def _terminate(pool: Any) -> None:
    """Stop a ProcessPoolExecutor's workers at once (``terminate_workers`` is Python 3.14+)."""
    if hasattr(pool, "terminate_workers"):
        pool.terminate_workers()
        return
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def map_shards(store: Any, plan: ShardPlan, fn: Callable[..., dict[str, Any] | None], kwargs: dict[str, Any], *,
               what: str, on_done: Callable[[str, dict[str, Any], int], None],
               split_kwargs: dict[str, dict[str, Any]] | None = None) -> None:
    """Make every shard of ``plan`` not yet in ``store``, in ``plan.num_proc`` processes.

    ``fn`` must be a module-level function; it is called with ``kwargs`` and,
    for a shard of split ``s``, ``split_kwargs[s]``.  ``on_done(name, meta, rows)`` is
    called in this process for each shard, reused or new, in completion order."""
    tables = plan.tables
    per_split = split_kwargs or {}
    todo = []
    for name, split, a, b in plan.shards:
        if store.done(name):
            store.reused += 1
            on_done(name, store.meta(name), b - a)
        else:
            todo.append((name, split, a, b))

    def failed(split: str, a: int, b: int, e: BaseException) -> StageError:
        from concurrent.futures.process import BrokenProcessPool

        if isinstance(e, StageError):
            return e
        if isinstance(e, BrokenProcessPool):  # the pool cannot tell which shard's worker it was
            return StageError(
                f"{what} failed: a worker process died (killed, or out of memory?) while working on split "
                f"{split!r} ({type(e).__name__}); {store.computed + store.reused} finished shard(s) are kept and "
                "reused on the next run; try fewer worker processes (num_proc) or smaller shards (shard_size)")
        return StageError(
            f"{what} failed in split {split!r}, documents {a}..{b - 1}: {type(e).__name__}: {e} "
            f"({store.computed + store.reused} finished shard(s) are kept and reused on the next run)")

    procs = min(pool_size(plan.num_proc), len(todo))
    if procs <= 1:
        for name, split, a, b in todo:
            try:
                meta = store.commit(name, lambda tmp, split=split, a=a, b=b:
                                    fn(tables[split].slice(a, b - a), tmp, **kwargs, **per_split.get(split, {})))
            except StageError:
                raise
            except Exception as e:  # noqa: BLE001 - named with its documents
                raise failed(split, a, b, e) from e
            on_done(name, meta, b - a)
        return

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    _FORKED.clear()
    _FORKED.update(tables)
    _PARENT[:] = [os.getpid()]
    error: tuple | None = None
    pool = ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("fork"), initializer=_child_init)
    futures: dict[Any, tuple] = {}
    try:
        for name, split, a, b in todo:
            tmp = store.tmp_path(name)
            job = (fn, split, a, b, str(tmp), {**kwargs, **per_split.get(split, {})})
            futures[pool.submit(_run_job, job)] = (name, split, a, b, tmp)
        for fut in as_completed(futures):
            name, split, a, b, tmp = futures[fut]
            if fut.cancelled():
                continue
            try:
                meta = fut.result()
            except Exception as e:  # noqa: BLE001 - reported once the running shards finish
                if error is None:
                    error = (split, a, b, e)
                    for other in futures:
                        other.cancel()
                continue
            store.finish(name, tmp, meta)
            on_done(name, meta, b - a)
        pool.shutdown()
    except BaseException:  # Ctrl-C (or a failing on_done): stop the workers now, keep what is finished
        for f in futures:
            f.cancel()
        _terminate(pool)
        raise
    finally:
        _FORKED.clear()
        for child in store.root.glob(".tmp-*"):
            shutil.rmtree(child, ignore_errors=True)
    if error is not None:
        raise failed(*error) from error[3]
