"""`recipe run` starts a distributed stage's processes itself (torchrun on
127.0.0.1, gloo): every rank runs the stage, rank 0's outputs are committed,
a failing or killed rank fails the stage at once with that rank's error,
Ctrl-C stops every rank, and a re-run resumes from the checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

RECIPE = """
name: ranks
launch: {{processes: {processes}, launcher: {launcher}}}
stages:
  - {{type: allreduce, params: {{steps: {steps}, sleep: {sleep}{extra}}}}}
  - {{type: multiply, params: {{factor: 2}}}}
"""


def _recipe(write, tmp_path: Path, processes=2, steps=3, sleep=0.0, extra="", launcher="torchrun") -> Path:
    text = RECIPE.format(processes=processes, steps=steps, sleep=sleep, extra=extra, launcher=launcher)
    return write(tmp_path / "r.yaml", text)


def _cmd(recipe: Path, wd: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "recipe_runner.cli", "run", str(recipe), "--workdir", str(wd), *more]


def _workers(job_dir: Path | None = None) -> dict[int, int]:
    """pid -> rank of the processes alive now that run rank_worker (-1: the launcher), from /proc."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if b"recipe_runner.rank_worker" not in cmdline:
                continue
            if job_dir is not None and not any(str(job_dir).encode() in part for part in cmdline):
                continue
            env = dict(kv.split(b"=", 1) for kv in (proc / "environ").read_bytes().split(b"\0") if b"=" in kv)
            out[int(proc.name)] = int(env.get(b"RANK", b"-1"))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return out


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def _steps_done(wd: Path) -> int:
    logs = list(wd.rglob("progress.log"))
    return len(logs[0].read_text().splitlines()) if logs else 0


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_a_distributed_stage_runs_in_two_processes_and_rank0_is_committed(
    recipe_cli, status_json, write, tmp_path, launcher
):
    recipe, wd = _recipe(write, tmp_path, launcher=launcher), tmp_path / "runs"
    proc = recipe_cli("run", str(recipe), "--workdir", str(wd))
    assert proc.returncode == 0, proc.stderr
    stages = {s["name"]: s for s in status_json(recipe, wd)["stages"]}
    assert stages["allreduce"]["metrics"]["world_size"] == 2
    assert stages["allreduce"]["metrics"]["ranks_seen"] == 3  # 1 + 2: both ranks took part in every step
    assert "world_size" not in stages["multiply"]["metrics"]  # a plain stage runs once, in-process
    committed = next((wd / "ranks" / "stages").glob("allreduce-*"))
    assert sorted(p.name for p in committed.iterdir()) == ["outputs", "stage.json"]
    assert json.loads((committed / "outputs" / "numbers" / "numbers.json").read_text()) == [3.0, 3.0, 3.0]
    logs = wd / "ranks" / "logs"
    assert "rank 0 of 2 done" in (logs / "allreduce.log").read_text()  # rank 0's records, replayed
    assert "rank 1 of 2 done" in (logs / "allreduce.rank1.log").read_text()
    assert "rank 0 of 2" in proc.stderr and "rank 1 of 2 done" not in proc.stderr  # the console shows rank 0
    assert not _workers(wd)


def test_the_process_count_keys_a_distributed_stage_only(recipe_cli, status_json, write, tmp_path):
    wd = tmp_path / "runs"
    keys = {}
    for n in (1, 2):
        recipe = _recipe(write, tmp_path, processes=n)
        assert recipe_cli("run", str(recipe), "--workdir", str(wd)).returncode == 0
        keys[n] = {s["name"]: s["fingerprint"] for s in status_json(recipe, wd)["stages"]}
    assert keys[1]["allreduce"] != keys[2]["allreduce"]  # 2 ranks x per-device batch is another global batch
    assert json.loads(next((wd / "ranks" / "stages").glob("allreduce-*")).joinpath("stage.json").read_text())


def test_a_failing_rank_fails_the_stage_with_its_error(recipe_cli, status_json, write, tmp_path):
    recipe, wd = _recipe(write, tmp_path, steps=50, sleep=0.1, extra=", fail_rank: 1, fail_at: 2"), tmp_path / "runs"
    t = time.time()
    proc = recipe_cli("run", str(recipe), "--workdir", str(wd))
    assert proc.returncode != 0
    assert time.time() - t < 60  # no hang: the launcher stops rank 0, blocked in its all-reduce
    assert "rank 1 of 2 failed: planned failure of rank 1 at step 2" in proc.stderr
    entry = status_json(recipe, wd)["stages"][0]
    assert entry["status"] == "failed" and "rank 1 of 2 failed" in entry["error"]
    assert not _workers(wd)


def test_a_killed_rank_fails_the_stage_within_seconds(write, tmp_path):
    recipe, wd = _recipe(write, tmp_path, steps=200, sleep=0.1), tmp_path / "runs"
    proc = subprocess.Popen(_cmd(recipe, wd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _steps_done(wd) >= 2)
    rank1 = next(pid for pid, rank in _workers(wd).items() if rank == 1)
    os.kill(rank1, signal.SIGKILL)
    t = time.time()
    _, err = proc.communicate(timeout=60)
    assert time.time() - t < 20 and proc.returncode != 0
    assert "rank 1 of 2 was killed by SIGKILL" in err, err
    assert not _workers(wd)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stopping_the_run_stops_every_rank_and_a_rerun_resumes(recipe_cli, status_json, write, tmp_path, sig):
    recipe, wd = _recipe(write, tmp_path, steps=30, sleep=0.1), tmp_path / "runs"
    proc = subprocess.Popen(_cmd(recipe, wd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _steps_done(wd) >= 3)
    assert sorted(_workers(wd).values()) == [-1, 0, 1]  # torchrun and its two ranks
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    _wait_for(lambda: not _workers(wd), timeout=20)
    assert status_json(recipe, wd)["stages"][0]["status"] == "interrupted"
    again = recipe_cli("run", str(recipe), "--workdir", str(wd))
    assert again.returncode == 0, again.stderr
    assert "resuming at step" in again.stderr
    metrics = status_json(recipe, wd)["stages"][0]["metrics"]
    assert metrics["world_size"] == 2 and metrics["ranks_seen"] == 3


def test_a_stage_that_cannot_run_distributed_says_why(recipe_cli, write, tmp_path):
    recipe = write(
        tmp_path / "r.yaml",
        """
name: bad
stages:
  - {type: count, params: {n: 2}, launch: {processes: 2}}
""",
    )
    proc = recipe_cli("validate", str(recipe))
    assert proc.returncode != 0
    assert "stage 'count' (count) cannot run distributed: it runs in one process; remove its launch:" in proc.stderr


def test_launch_blocks_are_validated_with_their_location(recipe_cli, write, tmp_path):
    recipe = write(
        tmp_path / "r.yaml",
        """
name: bad
launch: {processes: 2, strategy: deepspeed, preset: fsdp_full_shard}
stages:
  - {type: allreduce, launch: {processes: 0}}
""",
    )
    proc = recipe_cli("validate", str(recipe))
    assert proc.returncode != 0
    assert "preset 'fsdp_full_shard' is a fsdp config; set strategy: fsdp" in proc.stderr
    assert "r.yaml:4:23: stage 'allreduce': stages[0].launch: Value error, processes must be at least 1" in proc.stderr


def test_a_run_directory_on_a_filesystem_without_locks_gets_a_clear_error(monkeypatch, tmp_path):
    """Lustre without -o flock answers flock() with ENOSYS: say so instead of a traceback."""
    import errno
    import fcntl

    from recipe_runner.errors import RunError
    from recipe_runner.store import RunLock

    def no_locks(fh, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(RunError, match=r"does not support file locks .* on Lustre mount it with -o flock"):
        RunLock(tmp_path / "run" / ".lock").acquire()


@pytest.mark.parametrize(("visible", "per_node"), [("0,1,2,3", 4), ("1", 1), ("", 1), ("-1", 1)])
def test_processes_auto_is_the_visible_gpus_and_1_without(monkeypatch, visible, per_node):
    from recipe_runner.launch import LaunchSpec

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    spec = LaunchSpec(processes="auto", nodes=2)
    assert (spec.per_node(), spec.world_size()) == (per_node, 2 * per_node)


def test_fsdp_and_deepspeed_are_launched_even_in_one_process():
    """They need torch.distributed, which only a launcher sets up; one-process DDP runs in-process."""
    from recipe_runner.launch import LaunchSpec

    assert LaunchSpec(processes=1, strategy="deepspeed").needs_launcher()
    assert LaunchSpec(processes=1, strategy="fsdp").needs_launcher()
    assert not LaunchSpec(processes=1).needs_launcher()
    assert LaunchSpec(processes=2).needs_launcher()


def test_rank0_tracks_into_the_stage_tracker_run(recipe_cli, write, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = write(
        tmp_path / "r.yaml",
        """
name: tracked
tracking: {backend: tensorboard}
launch: {processes: 2}
stages:
  - {type: allreduce, params: {steps: 3}}
""",
    )
    wd = tmp_path / "runs"
    proc = recipe_cli("run", str(recipe), "--workdir", str(wd))
    assert proc.returncode == 0, proc.stderr
    (events,) = (wd / "tracked" / "tracking" / "tensorboard").glob("*/allreduce")
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("sum")] == [(0, 3.0), (1, 3.0), (2, 3.0)]
    assert [e.value for e in acc.Scalars("final/world_size")] == [2.0]


def test_deepspeed_without_a_gpu_is_refused_before_any_rank_starts(recipe_cli, write, tmp_path):
    recipe = write(tmp_path / "r.yaml", RECIPE.format(processes=2, steps=3, sleep=0.0, extra="", launcher="torchrun"))
    wd = tmp_path / "runs"
    proc = recipe_cli(
        "run", str(recipe), "--workdir", str(wd), "--set", "launch.strategy=deepspeed", env={"CUDA_VISIBLE_DEVICES": ""}
    )
    assert proc.returncode != 0
    assert "stage 'allreduce' failed: strategy deepspeed needs GPUs and none is visible here" in proc.stderr
    assert not list((wd / "ranks" / "logs").glob("allreduce.rank*.log"))  # no rank was started
