"""Elastic resume through `recipe run`: a 1-process pretraining run killed
(SIGKILL) after a checkpoint, re-run with `launch.processes=2` and
`launch.elastic=true`, continues from that checkpoint in 2 processes instead
of training from scratch; the output names where it continued from and is not
pushed to the shared cache; without `elastic` another count trains afresh."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STEPS, SAVE = 24, 3
TRAIN = [
    "--set",
    f"stages.pretrain.params.max_steps={STEPS}",
    "--set",
    f"stages.pretrain.params.save_steps={SAVE}",
    "--set",
    "stages.pretrain.params.logging_steps=1",
]
TWO = ["--set", "launch.processes=2", "--set", "stages.pretrain.params.per_device_train_batch_size=2"]


def _kill_after_first_checkpoint(recipe: Path, wd: Path) -> int:
    """Run 1 process, SIGKILL it once a checkpoint is complete; the step it had reached."""
    cmd = [sys.executable, "-m", "recipe_runner.cli", "run", str(recipe), "--workdir", str(wd), *TRAIN]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            done = list((wd / "ddp-tiny" / "checkpoints").glob("pretrain-*/checkpoint-*/trainer_state.json"))
            if done:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return max(int(p.parent.name.split("-")[1]) for p in done)
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"no checkpoint before the run ended (exit {proc.returncode})")


def test_another_process_count_continues_the_killed_runs_checkpoints_with_elastic(
    recipe_cli, status_json, tiny_pretrain_recipe, tmp_path
):
    recipe, wd, cache = tiny_pretrain_recipe, tmp_path / "runs", tmp_path / "cache"
    reached = _kill_after_first_checkpoint(recipe, wd)
    assert reached < STEPS

    plain = recipe_cli("plan", str(recipe), "--workdir", str(wd), *TRAIN, *TWO)
    assert "processes 1 -> 2" in plain.stdout, plain.stdout  # without elastic: a new key, trained afresh
    elastic = [*TRAIN, *TWO, "--set", "launch.elastic=true"]
    plan = recipe_cli("plan", str(recipe), "--workdir", str(wd), *elastic)
    assert "continue the 1-process run's checkpoints (elastic)" in plan.stdout, plan.stdout

    proc = recipe_cli("run", str(recipe), "--workdir", str(wd), "--cache", str(cache), *elastic, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    entry = status_json(recipe, wd, *elastic)["stages"][-1]
    metrics = entry["metrics"]
    assert metrics["world_size"] == 2 and metrics["continued_from_processes"] == 1
    assert metrics["global_step"] == STEPS and metrics["resumed_from_step"] >= SAVE
    log = (wd / "ddp-tiny" / "logs" / "pretrain.log").read_text()
    assert "elastic: continuing from the checkpoints of the 1-process run" in log
    record_dir = f"pretrain-{entry['fingerprint'][:12]}"
    record = json.loads((wd / "ddp-tiny" / "stages" / record_dir / "stage.json").read_text())
    assert record["continued_from"]["world_size"] == 1
    history = json.loads((wd / "ddp-tiny" / "stages" / record_dir / "outputs/model/trainer_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == list(range(1, STEPS + 1))  # each step logged once
    listing = recipe_cli("cache", "ls", "--cache", str(cache)).stdout
    assert "pretrain" not in listing and "not pushed to the shared cache" in proc.stdout + proc.stderr

    again = recipe_cli("run", str(recipe), "--workdir", str(wd), *elastic)
    assert again.returncode == 0 and "stage pretrain (pretrain): cached" in again.stdout + again.stderr
