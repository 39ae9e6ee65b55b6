"""Tracking for the whole recipe, offline, for all three backends: every stage
gets a tracker run (time series from ctx.track plus its final metrics), grouped
per recipe run; a stage resumed after a kill continues its tracker run."""

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
name: tracked
tracking: {{backend: {backend}}}
stages:
  - {{type: count, params: {{n: {n}, sleep: {sleep}}}}}
  - {{type: multiply, params: {{factor: 2}}}}
"""


def _tracker_runs(wd: Path) -> dict[str, dict]:
    return {p.parent.name.rsplit("-", 1)[0]: json.loads(p.read_text()) for p in wd.rglob("checkpoints/*/tracker.json")}


def _mlflow_history(wd: Path, stage: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # the offline store the runs wrote

    client = MlflowClient(tracking_uri=(wd / "tracked" / "tracking" / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("tracked")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.runName` = '{stage}'")
    assert len(runs) == 1
    return sorted((m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, "value"))


def _tensorboard_scalars(wd: Path, stage: str, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = []
    for events in (wd / "tracked" / "tracking" / "tensorboard").glob(f"*/{stage}"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        out += [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []
    return sorted(out)


@pytest.mark.parametrize("backend", ["tensorboard", "mlflow", "wandb"])
def test_every_stage_is_tracked_offline(recipe_cli, write, tmp_path, backend):
    recipe = write(tmp_path / "t.yaml", RECIPE.format(backend=backend, n=4, sleep=0))
    wd = tmp_path / "runs"
    proc = recipe_cli("run", str(recipe), "--workdir", str(wd), env={"WANDB_SILENT": "true"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    if backend == "mlflow":
        assert _mlflow_history(wd, "count") == [(i, float(i)) for i in range(4)]
        assert _mlflow_history(wd, "multiply") == []  # only its final metrics
    elif backend == "tensorboard":
        assert _tensorboard_scalars(wd, "count", "value") == [(i, float(i)) for i in range(4)]
        assert _tensorboard_scalars(wd, "multiply", "final/length") == [(0, 4.0)]
    else:
        offline = list((wd / "tracked" / "tracking" / "wandb").glob("offline-run-*"))
        ids = {p.name.rsplit("-", 1)[1] for p in offline}
        assert len(offline) == 2 and len(ids) == 2  # one run per stage
        assert all((p / f"run-{p.name.rsplit('-', 1)[1]}.wandb").stat().st_size > 0 for p in offline)


def test_a_resumed_stage_continues_its_tracker_run(write, tmp_path):
    recipe = write(tmp_path / "t.yaml", RECIPE.format(backend="mlflow", n=30, sleep=0.1))
    wd = tmp_path / "runs"
    cmd = [sys.executable, "-m", "recipe_runner.cli", "run", str(recipe), "--workdir", str(wd)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list(wd.rglob("progress.log")):
        time.sleep(0.1)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    first_id = _tracker_runs(wd)["count"]["run_id"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    history = _mlflow_history(wd, "count")  # one run: both invocations' points
    assert [s for s, _ in history][-1] == 29 and len({s for s, _ in history}) == 30
    assert any(s < 5 for s, _ in history)
    runs = {
        p.name: json.loads(p.read_text()) for p in (wd / "tracked" / "checkpoints").glob("*/tracker.json")
    }  # the checkpoint dir is gone after commit; the id lives on in the mlflow run
    assert first_id and not runs


def test_a_tracker_that_is_not_installed_fails_validation(monkeypatch, tmp_path):
    import importlib.util

    from recipe_runner import tracking
    from recipe_runner.errors import RecipeError
    from recipe_runner.recipe import load_recipe

    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    recipe = tmp_path / "t.yaml"
    recipe.write_text(RECIPE.format(backend="wandb", n=2, sleep=0))
    with pytest.raises(RecipeError, match=r'needs wandb: pip install "recipe-runner\[tracking\]"'):
        load_recipe(recipe)
