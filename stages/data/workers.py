"""Per-document work over a dataset's shards, in forked worker processes.

A stage plans contiguous row ranges (:mod:`.shards`), then :func:`map_shards`
runs ``fn(table_slice, tmpdir, **kwargs) -> meta`` on each range not already
finished in the stage's :class:`~.shard_store.ShardStore`:

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

With ``executor: {type: ray}`` in the plan, the shards not yet finished are
Ray tasks instead (:mod:`.ray_executor`, imported only then), committed the
same way.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from recipe_runner import StageError

from .shard_store import ShardStore, ShardWriter

if TYPE_CHECKING:
    from .params import Executor
    from .shards import ShardPlan

#: Below this much input text per pass, a worker process costs more than it
#: saves (for cheap, vectorised passes; costly per-document passes such as
#: language ID or the datatrove rules pass a lower ``min_bytes``).
AUTO_PARALLEL_MIN_BYTES = 8 * 2**20
AUTO_PARALLEL_MIN_BYTES_COSTLY = 1 * 2**20
MAX_AUTO_PROCS = 8

#: ``fn(table_slice, tmpdir, **kwargs) -> meta`` (a module-level function, so forked workers can run it)
ShardFn = Callable[..., "dict[str, Any] | None"]
#: ``on_done(shard name, meta, rows)``, called in the stage's process for every shard
OnDone = Callable[[str, dict[str, Any], int], None]

# the tables of the running map, inherited by the forked workers
_FORKED: dict[str, Any] = {}
_PARENT: list[int] = []  # the pid that forked them
_TASK_PROCESS: list[bool] = []  # set in a Ray worker process by the ray executor


class _Shard(NamedTuple):
    name: str
    split: str
    start: int
    end: int


class _Job(NamedTuple):
    """What a forked worker gets (pickled): the function, the shard's rows, where to write."""

    fn: ShardFn
    split: str
    start: int
    end: int
    tmp: str
    kwargs: dict[str, Any]


def usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def resolve_num_proc(
    num_proc: Literal["auto"] | int, nbytes: int, rows: int | None = None, min_bytes: int = AUTO_PARALLEL_MIN_BYTES
) -> int:
    """The number of processes for one pass over ``nbytes`` of input."""
    if num_proc == "auto":
        if nbytes < min_bytes:
            return 1
        n = min(usable_cpus(), MAX_AUTO_PROCS)
    else:
        n = max(1, int(num_proc))
    if rows is not None:
        n = max(1, min(n, rows))
    return n


def pool_size(num_proc: int) -> int:
    """Worker processes :func:`map_shards` uses for ``num_proc``: fork is what
    lets the workers share the loaded state, and off Linux (macOS, Windows) it
    is unsafe or missing, so there the shards run in this process."""
    return max(1, num_proc) if sys.platform.startswith("linux") else 1


def in_worker() -> bool:
    """True inside a worker process forked by :func:`map_shards` (or a Ray
    worker running one shard per CPU, see :mod:`.ray_executor`)."""
    return bool(_TASK_PROCESS) or (bool(_PARENT) and os.getpid() != _PARENT[0])


def map_shards(
    store: ShardStore,
    plan: ShardPlan,
    fn: ShardFn,
    kwargs: dict[str, Any],
    *,
    what: str,
    on_done: OnDone,
    split_kwargs: Mapping[str, dict[str, Any]] | None = None,
) -> None:
    """Make every shard of ``plan`` not yet in ``store``, in ``plan.num_proc``
    processes, or as Ray tasks where ``plan.executor`` says so.

    ``fn`` must be a module-level function; it is called with ``kwargs`` and,
    for a shard of split ``s``, ``split_kwargs[s]``.  ``on_done(name, meta, rows)`` is
    called in this process for each shard, reused or new, in completion order."""
    per_split = split_kwargs or {}
    shard_kwargs = {split: {**kwargs, **per_split.get(split, {})} for split in plan.tables}
    work = _ShardMap(store, plan.tables, fn, shard_kwargs, what, on_done)
    todo = work.reuse_finished(plan)
    if plan.executor.type == "ray":
        if todo:
            from .ray_executor import run_on_ray

            run_on_ray(work, todo, plan.executor)
        return
    procs = min(pool_size(plan.num_proc), len(todo))
    if procs <= 1:
        work.run_here(todo)
    else:
        work.run_forked(todo, procs)


def make_shards(
    store: ShardStore,
    writers: Mapping[str, ShardWriter],
    executor: Executor,
    on_done: Callable[[str, dict[str, Any]], None],
    *,
    what: str,
) -> None:
    """Make the shards ``writers`` (``name -> write(tmpdir) -> meta``) not yet
    in ``store``: one after the other in this process, or as Ray tasks (each
    ``write`` must then be picklable: a ``functools.partial`` of a module-level
    function).  ``on_done(name, meta)`` is called for each shard, reused or
    new, reused ones first."""
    todo = {}
    for name, write in writers.items():
        if store.done(name):
            store.reused += 1
            on_done(name, store.meta(name))
        else:
            todo[name] = write
    if executor.type == "ray" and todo:
        from .ray_executor import make_on_ray

        make_on_ray(store, todo, executor, on_done, what)
        return
    for name, write in todo.items():
        on_done(name, store.commit(name, write))


@dataclass
class _ShardMap:
    """One :func:`map_shards` call: where shards go, what makes them, who hears of them."""

    store: ShardStore
    tables: Mapping[str, Any]
    fn: ShardFn
    shard_kwargs: Mapping[str, dict[str, Any]]
    what: str
    on_done: OnDone

    def reuse_finished(self, plan: ShardPlan) -> list[_Shard]:
        """Report the shards an earlier run finished; return the others."""
        todo = []
        for shard in map(_Shard._make, plan.shards):
            if self.store.done(shard.name):
                self.store.reused += 1
                self.on_done(shard.name, self.store.meta(shard.name), shard.end - shard.start)
            else:
                todo.append(shard)
        return todo

    def run_here(self, todo: list[_Shard]) -> None:
        """Make the shards one after the other in this process."""
        for shard in todo:
            rows = self.tables[shard.split].slice(shard.start, shard.end - shard.start)

            def write(tmp: Path, rows: Any = rows, kwargs: dict[str, Any] = self.shard_kwargs[shard.split]) -> Any:
                return self.fn(rows, tmp, **kwargs)

            try:
                meta = self.store.commit(shard.name, write)
            except StageError:
                raise
            except Exception as e:  # a failure in the stage's own code or a plugin: named with its documents
                raise self.failure(shard, e) from e
            self.on_done(shard.name, meta, shard.end - shard.start)

    def run_forked(self, todo: list[_Shard], procs: int) -> None:
        """Make the shards in ``procs`` forked workers; the first failure is
        raised once the running shards are done, a Ctrl-C stops the workers at once."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        _FORKED.clear()
        _FORKED.update(self.tables)
        _PARENT[:] = [os.getpid()]
        pool = ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("fork"), initializer=_child_init)
        futures: dict[Future[dict[str, Any]], tuple[_Shard, Path]] = {}
        try:
            for shard in todo:
                tmp = self.store.tmp_path(shard.name)
                job = _Job(self.fn, shard.split, shard.start, shard.end, str(tmp), self.shard_kwargs[shard.split])
                futures[pool.submit(_run_job, job)] = (shard, tmp)
            failure = self.collect(futures)
            pool.shutdown()
        except BaseException:  # Ctrl-C (or a failing on_done): stop the workers now, keep what is finished
            for f in futures:
                f.cancel()
            _terminate(pool)
            raise
        finally:
            _FORKED.clear()
            for child in self.store.root.glob(".tmp-*"):
                shutil.rmtree(child, ignore_errors=True)
        if failure is not None:
            shard, error = failure
            raise self.failure(shard, error) from error

    def collect(self, futures: dict[Future[dict[str, Any]], tuple[_Shard, Path]]) -> tuple[_Shard, Exception] | None:
        """Commit each shard as its worker finishes; after the first failure,
        cancel the queued shards and return it once the running ones are done."""
        from concurrent.futures import as_completed

        failure: tuple[_Shard, Exception] | None = None
        for fut in as_completed(futures):
            shard, tmp = futures[fut]
            if fut.cancelled():
                continue
            try:
                meta = fut.result()
            except Exception as e:  # reported once the running shards finish
                if failure is None:
                    failure = (shard, e)
                    for other in futures:
                        other.cancel()
                continue
            self.store.finish(shard.name, tmp, meta)
            self.on_done(shard.name, meta, shard.end - shard.start)
        return failure

    def failure(self, shard: _Shard, error: BaseException) -> StageError:
        """The StageError for a shard that failed: which documents, and that the finished shards are kept."""
        from concurrent.futures.process import BrokenProcessPool

        if isinstance(error, StageError):
            return error
        kept = f"{self.store.computed + self.store.reused} finished shard(s) are kept and reused on the next run"
        if isinstance(error, BrokenProcessPool):  # the pool cannot tell which shard's worker it was
            return StageError(
                f"{self.what} failed: a worker process died (killed, or out of memory?) while working on split "
                f"{shard.split!r} ({type(error).__name__}); {kept}; try fewer worker processes (num_proc) or "
                "smaller shards (shard_size)"
            )
        return StageError(
            f"{self.what} failed in split {shard.split!r}, documents {shard.start}..{shard.end - 1}: "
            f"{type(error).__name__}: {error} ({kept})"
        )


def _run_job(job: _Job) -> dict[str, Any]:
    Path(job.tmp).mkdir(parents=True)
    return job.fn(_FORKED[job.split].slice(job.start, job.end - job.start), Path(job.tmp), **job.kwargs) or {}


def _child_init() -> None:
    """Set up a forked worker:

    - it dies with its parent (a parent killed outright would otherwise leave
      idle workers holding its inherited file descriptors, the run lock too);
    - SIGTERM ends it at once and SIGINT is the parent's to handle (the
      runner's handlers, inherited, would turn them into exceptions the pool
      catches, and the worker would go on to its next shard);
    - it logs through plain handlers (:func:`plain_logging`)."""
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
    plain_logging()


def plain_logging() -> None:
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
