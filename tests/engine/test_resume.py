"""Real processes: SIGKILL in the middle of a stage then resume; a second
concurrent run on the same run directory is refused; a stale lock is taken over."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _slow_recipe(write, tmp_path: Path, n: int = 40) -> Path:
    return write(
        tmp_path / "slow.yaml",
        f"""
        name: slow
        stages:
          - type: count
            params: {{n: {n}, sleep: 0.1}}
          - type: total
        """,
    )


def _start(recipe: Path, wd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "recipe_runner.cli", "run", str(recipe), "--workdir", str(wd)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def _wait_for_steps(wd: Path, steps: int, timeout: float = 60) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for log in wd.glob("slow/checkpoints/count-*/progress.log"):
            if len(log.read_text().splitlines()) >= steps:
                return log
        time.sleep(0.05)
    raise AssertionError("the stage never got going")


def test_sigkill_mid_stage_then_resume(recipe_cli, status_json, write, tmp_path):
    recipe, wd = _slow_recipe(write, tmp_path), tmp_path / "runs"
    proc = _start(recipe, wd)
    log = _wait_for_steps(wd, 5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    done_before = len(log.read_text().splitlines())
    assert 5 <= done_before < 40

    st = status_json(recipe, wd)["stages"]
    assert st[0]["status"] == "interrupted" and "interrupted" in st[0]["error"]
    assert not any((wd / "slow" / "stages").glob("count-*")), "a half-written output was committed"

    plan = json.loads(recipe_cli("plan", str(recipe), "--workdir", str(wd), "--json").stdout)
    assert plan[0]["reason"] == "resume (interrupted)"

    res = recipe_cli("run", str(recipe), "--workdir", str(wd), timeout=120)
    assert res.returncode == 0, res.stderr
    assert "took over the lock" in res.stderr
    st = status_json(recipe, wd)["stages"]
    resumed_from = st[0]["metrics"]["resumed_from_step"]
    assert resumed_from >= done_before - 1  # at most the step in flight is redone
    assert st[1]["metrics"]["sum"] == sum(range(40))
    assert (wd / "slow" / "logs" / "count.log").read_text().count("resuming") >= 1


def test_concurrent_run_is_refused(recipe_cli, status_json, write, tmp_path):
    recipe, wd = _slow_recipe(write, tmp_path, n=30), tmp_path / "runs"
    first = _start(recipe, wd)
    try:
        _wait_for_steps(wd, 1)
        second = recipe_cli("run", str(recipe), "--workdir", str(wd))
        assert second.returncode == 2
        assert "is in use by another `recipe run`" in second.stderr and f"pid {first.pid}" in second.stderr
        st = status_json(recipe, wd)["stages"]
        assert st[0]["status"] == "running"
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=30)
    # SIGTERM is recorded as an interruption, and the next run resumes
    assert first.returncode == 130
    st = status_json(recipe, wd)["stages"]
    assert st[0]["status"] == "interrupted" and "interrupted" in st[0]["error"]


def test_multi_process_launch_only_rank0_commits(write, tmp_path):
    """Under `accelerate launch`/torchrun every rank runs the stages, rank 0 alone
    locks, writes the manifest and commits; other ranks wait for its commit."""
    recipe, wd = _slow_recipe(write, tmp_path, n=5), tmp_path / "runs"
    procs = []
    for rank in (1, 0):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "recipe_runner.cli", "run", str(recipe), "--workdir", str(wd)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)),
            )
        )
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    manifest = json.loads((wd / "slow" / "manifest.json").read_text())
    assert manifest["pid"] == procs[1].pid
    assert len(list((wd / "slow" / "stages").glob("count-*"))) == 1
    assert not list((wd / "slow" / "tmp").glob("*rank1*"))


def test_force_starts_a_stage_from_scratch(recipe_cli, status_json, write, tmp_path):
    recipe, wd = _slow_recipe(write, tmp_path, n=30), tmp_path / "runs"
    proc = _start(recipe, wd)
    _wait_for_steps(wd, 5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    forced = recipe_cli("run", str(recipe), "--workdir", str(wd), "--force", "count")
    assert forced.returncode == 0, forced.stderr
    assert "--force: its in-stage checkpoints were cleared" in forced.stderr
    assert "resuming at step" not in forced.stderr
    assert "resumed_from_step" not in status_json(recipe, wd)["stages"][0]["metrics"]
