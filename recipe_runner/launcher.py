"""Starts a distributed stage's processes from the orchestrating ``recipe run``:
writes the job the ranks read, runs torchrun or ``accelerate launch`` (through
srun across the nodes of a Slurm allocation), replays rank 0's log, progress
and tracker points while it waits, and hands rank 0's outputs back to the
runner to commit.  A failed or killed rank fails the stage with that rank's
error within seconds (the launcher stops the others); Ctrl-C or SIGTERM stops
every rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .artifacts import Artifact
from .errors import RunError
from .launch import LaunchSpec
from .rank_events import EventReplay
from .rank_worker import ERRORS, RESULT
from .stage import StageContext, StageError

WORKER = ["-m", "recipe_runner.rank_worker"]
STOP_GRACE_SECONDS = 15.0


def launch_command(spec: LaunchSpec, job_file: Path, env: dict[str, str]) -> list[str]:
    """The command that starts ``spec.world_size()`` ranks of the worker."""
    worker = [*WORKER, str(job_file)]
    if spec.nodes > 1:
        from .slurm import multi_node_command

        command: list[str] = multi_node_command(spec, worker, env)
        return command
    n = str(spec.per_node())
    if spec.launcher == "accelerate":
        # --multi_gpu is its torchrun-based launcher, on CPU too (--cpu starts one process); precision and
        # compilation stay with the Trainer, which sets them from the stage's parameters
        port = str(spec.port or _free_port())
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", n,
                "--num_machines", "1", "--main_process_port", port, "--mixed_precision", "no",
                "--dynamo_backend", "no", *worker]  # fmt: skip
    rdzv = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{spec.port}"] if spec.port else ["--standalone"]
    return [sys.executable, "-m", "torch.distributed.run", *rdzv, "--nnodes", "1", "--nproc-per-node", n,
            "--max-restarts", "0", "--monitor-interval", "0.5", *worker]  # fmt: skip


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class DistributedLaunch:
    """One launch of one stage: ``run()`` returns rank 0's outputs and fills
    ``ctx.metrics`` with its metrics."""

    def __init__(self, ctx: StageContext[Any], spec: LaunchSpec, job: dict[str, Any], tmp: Path, logs: Path):
        self.ctx, self.spec, self.tmp, self.logs = ctx, spec, tmp, logs
        self.job = {
            **job,
            "tmp": str(tmp),
            "logs": str(logs),
            "tracking": ctx.tracker is not None,
            "world_size": spec.world_size(),
        }

    def run(self) -> dict[str, Artifact]:
        job_file = self.tmp / "job.json"  # the runner hands every launch a fresh temporary directory
        job_file.write_text(json.dumps(self.job))
        env = dict(os.environ)
        cmd = launch_command(self.spec, job_file, env)
        self.ctx.log.info("starting %d processes: %s", self.spec.world_size(), " ".join(cmd[1:4]) + " ...")
        replay = EventReplay(self.tmp / "events.jsonl", self.ctx.log, self.ctx.progress_sink, self.ctx.tracker)
        launcher_log = self.logs / f"{self.ctx.name}.launcher.log"
        with launcher_log.open("ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_detach)
            try:
                while proc.poll() is None:
                    time.sleep(0.1)
                    replay.pump()
            except BaseException:
                _stop(proc)
                raise
            finally:
                replay.close()
                job_file.unlink(missing_ok=True)  # it names the recipe's --set values
        if proc.returncode != 0:
            raise StageError(self._failure(proc.returncode, launcher_log))
        outputs = self._result()
        self._clean()
        return outputs

    def _clean(self) -> None:
        """Leave only rank 0's outputs in the directory the runner commits."""
        import shutil

        for p in self.tmp.iterdir():
            if p.name != "outputs":
                shutil.rmtree(p) if p.is_dir() else p.unlink()

    def _result(self) -> dict[str, Artifact]:
        path = self.tmp / RESULT
        if not path.exists():
            raise RunError(f"stage '{self.ctx.name}': the ranks exited cleanly but rank 0 wrote no {RESULT}")
        result = json.loads(path.read_text())
        self.ctx.metrics.update(result.get("metrics", {}))
        return {k: Artifact.from_json(v) for k, v in result["outputs"].items()}

    def _failure(self, code: int, launcher_log: Path) -> str:
        """The rank that failed first is the cause (the launcher stopped the
        others after it): a rank killed by a signal other than the launcher's
        own SIGTERM, else the rank whose error came first."""
        errors = [json.loads(p.read_text()) for p in (self.tmp / ERRORS).glob("rank*.json")]
        errors.sort(key=lambda e: e.get("time", 0.0))
        killed = _killed_ranks(launcher_log.read_text(errors="replace"))
        if killed:
            rank, exit_code = killed[0]
        elif errors:
            rank, exit_code = errors[0]["rank"], 1
        else:
            return f"the launcher exited with code {code}; see {launcher_log}\n{_tail(launcher_log.read_text(), 8)}"
        rank_log = self.logs / f"{self.ctx.name}.rank{rank}.log"
        head = f"rank {rank} of {self.spec.world_size()}"
        own = next((e for e in errors if e["rank"] == rank), None)
        if own is not None and not killed:
            tb = own.get("traceback", "")
            tail = "" if "StageError" in tb else "\n" + _tail(tb, 6)
            return f"{head} failed: {own['message']} (its log: {rank_log}){tail}"
        last = _tail(rank_log.read_text(errors="replace"), 4) if rank_log.exists() else ""
        return f"{head} {_how(exit_code)} (its log: {rank_log})" + (f"\n{last}" if last else "")


def _detach() -> None:
    """In the launcher's child: its own process group (so Ctrl-C reaches it
    only through :func:`_stop`, once), and SIGTERM when the orchestrator dies
    (a ``kill -9`` of ``recipe run`` must not leave ranks writing checkpoints)."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the launcher's process group (it forwards to the ranks), SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _killed_ranks(text: str) -> list[tuple[int, int]]:
    """(rank, exit code) of the ranks torchrun reports killed by a signal
    other than SIGTERM (which it sends itself to stop the survivors)."""
    import re

    found = re.findall(r"rank\s*:\s*(\d+)[^\n]*\n\s*exitcode\s*:\s*(-\d+)", text)
    return [(int(r), int(c)) for r, c in found if int(c) != -signal.SIGTERM]


def _how(exit_code: int) -> str:
    if exit_code >= 0:
        return f"exited with code {exit_code}"
    try:
        return f"was killed by {signal.Signals(-exit_code).name}"
    except ValueError:
        return f"was killed by signal {-exit_code}"


def _tail(text: str, lines: int) -> str:
    return "\n".join(line for line in text.strip().splitlines()[-lines:])
