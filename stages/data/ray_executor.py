"""The data stages' shards as Ray tasks (``executor: {type: ray}``).

:func:`~.workers.map_shards` hands the shards an earlier run did not finish
to :func:`run_on_ray`, which runs each as a Ray task and commits it exactly
as the fork pool does: the task writes into the shard's temporary directory
in the store (so every node must see the run directory: a shared file
system), returns its small ``meta`` dict, and this process renames the
directory into place.  The shard store, shard-level resume and the output
bytes are therefore the same as with ``{type: local}``.

A task gets its rows as an Arrow table through Ray's object store; at most
two tasks per CPU slot of the cluster are in flight, so the object store
holds a few shards' input, never the corpus.  This module is imported only
when a recipe asks for Ray, and Ray only here.
"""

from __future__ import annotations

import shutil
import signal
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recipe_runner import StageError

if TYPE_CHECKING:
    from .params import RayExecutor
    from .shard_store import ShardStore, ShardWriter
    from .workers import ShardFn, _Shard, _ShardMap

INSTALL_HINT = 'pip install "recipe-runner[ray]"'
#: tasks in flight per CPU slot of the cluster (one running, one with its input ready)
IN_FLIGHT_PER_SLOT = 2
#: a task whose worker process or node dies is run again this many times
MAX_RETRIES = 2
#: seconds between checks for Ctrl-C while waiting on the tasks
WAIT_SECONDS = 0.5


def import_ray() -> Any:
    """The ``ray`` module, or a StageError saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise StageError(f"executor type 'ray' needs Ray, which is not installed: {INSTALL_HINT}") from e
    return ray


def connect(executor: RayExecutor) -> Any:
    """The ``ray`` module, connected to the executor's cluster (once per
    process: later stages of the run reuse the connection)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    keep = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        ray.init(address=executor.address, log_to_driver=False, configure_logging=False)
    except Exception as e:  # no cluster at 'auto', a wrong address, a refused connection
        where = executor.address or "$RAY_ADDRESS / a local instance"
        raise StageError(f"cannot connect to the Ray cluster at {where}: {type(e).__name__}: {e}") from e
    finally:
        if keep is not None:  # ray.init replaces the runner's SIGTERM handler with one that exits
            signal.signal(signal.SIGTERM, keep)
    return ray


def run_on_ray(work: _ShardMap, todo: list[_Shard], executor: RayExecutor) -> None:
    """Make the shards ``todo`` of a :func:`~.workers.map_shards` call as Ray
    tasks, committing each as it finishes; the first failure is raised once
    the running tasks are done (the queued ones are not started), a Ctrl-C
    cancels every task at once."""
    ray = connect(executor)
    task = ray.remote(_shard_task).options(num_cpus=executor.num_cpus, max_retries=MAX_RETRIES)
    one_thread = executor.num_cpus <= 1
    shards = {shard.name: shard for shard in todo}

    def start(shard: _Shard) -> Callable[[str], Any]:
        def submit(tmp: str) -> Any:  # the rows are sliced only when the task is about to be sent
            rows = work.tables[shard.split].slice(shard.start, shard.end - shard.start)
            return task.remote(work.fn, rows, tmp, work.shard_kwargs[shard.split], one_thread)

        return submit

    def done(name: str, meta: dict[str, Any]) -> None:
        work.on_done(name, meta, shards[name].end - shards[name].start)

    failure = _run_tasks(ray, work.store, {s.name: start(s) for s in todo}, _window(ray, executor), done)
    if failure is not None:
        name, error = failure
        raise work.failure(shards[name], error) from error
    _report(ray, work.store, work.what, len(todo))


def make_on_ray(
    store: ShardStore,
    writers: Mapping[str, ShardWriter],
    executor: RayExecutor,
    on_done: Callable[..., None],
    what: str,
) -> None:
    """Make the shards ``writers`` (``name -> write(tmpdir) -> meta``, each
    picklable) as Ray tasks; see :func:`~.workers.make_shards`."""
    ray = connect(executor)
    task = ray.remote(_writer_task).options(num_cpus=executor.num_cpus, max_retries=MAX_RETRIES)

    def start(write: ShardWriter) -> Callable[[str], Any]:
        return lambda tmp: task.remote(write, tmp)

    jobs = {name: start(write) for name, write in writers.items()}
    failure = _run_tasks(ray, store, jobs, _window(ray, executor), on_done)
    if failure is not None:
        name, error = failure
        if isinstance(error, StageError):
            raise error
        kept = f"{store.computed + store.reused} finished shard(s) are kept and reused on the next run"
        raise StageError(f"{what} failed in shard {name}: {type(error).__name__}: {error} ({kept})") from error
    _report(ray, store, what, len(writers))


def _report(ray: Any, store: ShardStore, what: str, n: int) -> None:
    """Say in the stage's log where the shards ran."""
    if store.log is None:
        return
    try:
        where = ray.get_runtime_context().gcs_address
    except Exception:  # Ray Client: no GCS address on this side
        where = "(Ray Client)"
    cpus = float(ray.cluster_resources().get("CPU", 0))
    store.log.info("%s: %d shard(s) ran as Ray tasks on the cluster at %s (%g CPUs)", what, n, where, cpus)


def _window(ray: Any, executor: RayExecutor) -> int:
    """Tasks in flight at once: two per slot of ``num_cpus`` the cluster has."""
    cpus = float(ray.cluster_resources().get("CPU", 0))
    if cpus < executor.num_cpus:
        raise StageError(f"executor.num_cpus is {executor.num_cpus} but the Ray cluster has {cpus:g} CPU(s)")
    return max(1, int(cpus // executor.num_cpus)) * IN_FLIGHT_PER_SLOT


def _run_tasks(
    ray: Any, store: ShardStore, jobs: Mapping[str, Callable[[str], Any]], window: int, done: Callable[..., None]
) -> tuple[str, BaseException] | None:
    """Start ``jobs[name](tmpdir) -> ObjectRef`` (at most ``window`` at once)
    and move each finished shard into place, calling ``done(name, meta)``;
    return the first failure, once the running tasks are done."""
    queue = list(jobs.items())[::-1]
    running: dict[Any, tuple[str, Path]] = {}
    failure: tuple[str, BaseException] | None = None
    try:
        while queue or running:
            while queue and len(running) < window:
                name, submit = queue.pop()
                tmp = store.tmp_path(name)
                running[submit(str(tmp))] = (name, tmp)
            for ref in _wait(ray, list(running)):
                name, tmp = running.pop(ref)
                try:
                    meta = ray.get(ref)
                except Exception as e:  # reported once the running tasks finish
                    if failure is None:
                        failure = (name, _cause(ray, e))
                        queue.clear()
                    continue
                store.finish(name, tmp, meta)
                done(name, meta)
    except BaseException:  # Ctrl-C (or a failing callback): stop the tasks now, keep what is finished
        for ref in running:
            ray.cancel(ref, force=True)
        raise
    finally:
        for child in store.root.glob(".tmp-*"):
            shutil.rmtree(child, ignore_errors=True)
    return failure


def _wait(ray: Any, refs: list[Any]) -> list[Any]:
    """The finished tasks among ``refs`` (after at most ``WAIT_SECONDS``).  A
    signal handler that raises during Ray's wait (the runner's SIGTERM
    handler, Ctrl-C) has its exception wrapped in a SystemError by the
    extension: the original is raised instead, so the stage is interrupted,
    not failed."""
    try:
        ready: list[Any] = ray.wait(refs, num_returns=1, timeout=WAIT_SECONDS)[0]
    except SystemError as e:
        inner = e.__cause__ or e.__context__
        if isinstance(inner, BaseException) and not isinstance(inner, Exception):
            raise inner from None
        raise
    return ready


def _cause(ray: Any, error: Exception) -> BaseException:
    """The exception a shard's own code raised (a task error wraps it with
    the remote traceback), or Ray's own error (a worker or node that died)."""
    if isinstance(error, ray.exceptions.RayTaskError):
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException):
            return cause
    return error


def _fresh_dir(tmp: str) -> Path:
    """The shard's temporary directory, empty (a retried task finds what the
    attempt whose worker died left)."""
    path = Path(tmp)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _writer_task(write: ShardWriter, tmp: str) -> dict[str, Any]:
    """One shard of :func:`make_on_ray` in a Ray worker."""
    return write(_fresh_dir(tmp)) or {}


def _shard_task(fn: ShardFn, rows: Any, tmp: str, kwargs: dict[str, Any], one_thread: bool) -> dict[str, Any]:
    """One shard of :func:`run_on_ray` in a Ray worker: ``fn(rows, tmpdir,
    **kwargs)``.  ``one_thread``: the task has one CPU, so the shard functions
    run as in a forked worker (one tokenizer thread)."""
    from . import workers

    workers._TASK_PROCESS[:] = [True] if one_thread else []
    return fn(rows, _fresh_dir(tmp), **kwargs) or {}
