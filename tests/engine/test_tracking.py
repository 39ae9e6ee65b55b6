"""Tracking for the whole recipe, offline, for all three backends, read back
with each backend's own reader (mlflow's client, TensorBoard's
EventAccumulator, wandb's offline run file parsed into wandb's own protobuf
records): every stage gets a tracker run (time series from ctx.track plus its
final metrics), data stages included, grouped per recipe run; a stage killed
(SIGKILL) and re-run continues its tracker run, each step delivered at least
once (exactly once where the backend can tell: mlflow, tensorboard)."""

from __future__ import annotations

import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BACKENDS = ["tensorboard", "mlflow", "wandb"]

RECIPE = """
name: tracked
tracking: {{backend: {backend}}}
stages:
  - {{type: count, params: {{n: {n}, sleep: {sleep}}}}}
  - {{type: multiply, params: {{factor: 2}}}}
"""


@dataclass
class TrackerRun:
    """One tracker run as the backend stored it (wandb: one per process that opened it)."""

    id: str
    group: str
    points: list[tuple[int, str, float]] = field(default_factory=list)  # (step, key, value)
    final: dict[str, float] = field(default_factory=dict)

    def steps(self, key: str) -> list[int]:
        return sorted(s for s, k, _ in self.points if k == key)


def _env(tmp_path: Path) -> dict[str, str]:
    """wandb's settings and caches under tmp_path, not the home directory (its runs are offline:
    the tracking block's default)."""
    return {
        "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
    }


def _mlflow_runs(uri: str, experiment: str) -> dict[str, list[TrackerRun]]:
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # the offline store the runs wrote
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no mlflow experiment {experiment!r}"
    out: dict[str, list[TrackerRun]] = {}
    for r in client.search_runs([exp.experiment_id]):
        run = TrackerRun(r.info.run_id, r.data.tags["recipe_runner.group"])
        for key in r.data.metrics:
            history = client.get_metric_history(r.info.run_id, key)
            if key.startswith("final/"):
                run.final[key.removeprefix("final/")] = history[-1].value
            else:
                run.points += [(m.step, key, m.value) for m in history]
        out.setdefault(r.data.tags["mlflow.runName"], []).append(run)
    return out


def _tensorboard_runs(logdir: Path) -> dict[str, list[TrackerRun]]:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    out: dict[str, list[TrackerRun]] = {}
    for stage_dir in sorted(logdir.glob("*/*")):
        acc = EventAccumulator(str(stage_dir), size_guidance={SCALARS: 0})
        acc.Reload()  # what TensorBoard shows: a restart marker drops the steps a killed run logged from it on
        run = TrackerRun(f"{stage_dir.parent.name}/{stage_dir.name}", stage_dir.parent.name)
        for tag in acc.Tags()["scalars"]:
            if tag.startswith("final/"):
                run.final[tag.removeprefix("final/")] = acc.Scalars(tag)[-1].value
            else:
                run.points += [(e.step, tag, e.value) for e in acc.Scalars(tag)]
        out.setdefault(stage_dir.name, []).append(run)
    return out


def _wandb_records(path: Path) -> list:
    """The records of a wandb offline run file (``run-ID.wandb``): wandb's leveldb-style log
    (7-byte file header, 32 KiB blocks of chunks with a 7-byte header) of its protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    records, pos, buf = [], 7, b""
    while pos + 7 <= len(data):
        if (left := 32768 - pos % 32768) < 7:  # a block's tail too short for a chunk header
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding: the rest of the block is empty
            pos += left
            continue
        buf = (b"" if kind in (1, 2) else buf) + data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            records.append(pb.Record.FromString(buf))
    return records


def _key(item) -> str:
    return item.key or ".".join(item.nested_key)


def _wandb_run(run_file: Path) -> tuple[str, TrackerRun]:
    run: TrackerRun | None = None
    stage = ""
    for rec in _wandb_records(run_file):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            stage, run = rec.run.display_name, TrackerRun(rec.run.run_id, rec.run.run_group)
        elif kind == "history" and run is not None:
            row = {_key(i): json.loads(i.value_json) for i in rec.history.item if not _key(i).startswith("_")}
            step = row.pop("step")
            run.points += [(step, k, float(v)) for k, v in row.items() if isinstance(v, int | float)]
        elif kind == "summary" and run is not None:
            run.final.update({_key(i): json.loads(i.value_json) for i in rec.summary.update})
    assert run is not None, f"{run_file}: no run record"
    return stage, run


def _wandb_runs(wandb_dir: Path) -> dict[str, list[TrackerRun]]:
    out: dict[str, list[TrackerRun]] = {}
    for run_file in sorted(wandb_dir.glob("offline-run-*/run-*.wandb")):  # by start time
        stage, run = _wandb_run(run_file)
        out.setdefault(stage, []).append(run)
    return out


def read_tracker(backend: str, tracking_dir: Path, experiment: str, mlflow_uri: str | None = None):
    """Stage name -> its tracker runs, read back with the backend's own reader."""
    if backend == "mlflow":
        return _mlflow_runs(mlflow_uri or (tracking_dir / "mlruns").resolve().as_uri(), experiment)
    if backend == "tensorboard":
        return _tensorboard_runs(tracking_dir / "tensorboard")
    return _wandb_runs(tracking_dir / "wandb")


def assert_final_metrics(run: TrackerRun, metrics: dict) -> None:
    """The tracker holds every numeric final metric of the stage."""
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    assert numeric, metrics
    for k, v in numeric.items():
        assert math.isclose(run.final[k], v, rel_tol=1e-5), (k, run.final.get(k), v)


def assert_one_point_per_step(runs: list[TrackerRun], key: str, steps: list[int], backend: str) -> None:
    """Each step delivered: exactly once where the backend drops a step sent again (mlflow keeps
    the first, TensorBoard shows the resumed file's), at least once in wandb (each process writes
    its own offline file; the resumed one has each step from the checkpoint on once)."""
    if backend == "wandb":
        assert set().union(*(r.steps(key) for r in runs)) == set(steps)
        assert all(c == 1 for c in Counter(runs[-1].steps(key)).values()), runs[-1].steps(key)
    else:
        assert [r.steps(key) for r in runs] == [steps]


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_stage_is_tracked_offline(recipe_cli, write, tmp_path, backend):
    recipe = write(tmp_path / "t.yaml", RECIPE.format(backend=backend, n=4, sleep=0))
    wd = tmp_path / "runs"
    proc = recipe_cli("run", str(recipe), "--workdir", str(wd), env=_env(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    runs = read_tracker(backend, wd / "tracked" / "tracking", "tracked")
    assert sorted(runs) == ["count", "multiply"] and all(len(r) == 1 for r in runs.values())
    assert len({r[0].group for r in runs.values()}) == 1  # one group for the recipe run
    assert sorted((s, v) for s, k, v in runs["count"][0].points if k == "value") == [(i, float(i)) for i in range(4)]
    assert runs["multiply"][0].points == [] and runs["multiply"][0].final["length"] == 4.0  # only its final metrics


def _tracker_ids(wd: Path) -> dict[str, str]:
    return {
        p.parent.name.rsplit("-", 1)[0]: json.loads(p.read_text())["run_id"]
        for p in wd.rglob("checkpoints/*/tracker.json")
    }


def _run_and_kill(cmd: list[str], env: dict, ready: Callable[[], bool], what: str) -> None:
    """Start `recipe run`, SIGKILL its process group once `ready()` holds."""
    proc = subprocess.Popen(
        cmd, env=dict(os.environ, **env), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if ready():
                return
            time.sleep(0.02)
        raise AssertionError(f"the run ended (exit {proc.returncode}) or timed out before {what}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _counted_and_quiet(checkpoints: Path, steps: int) -> Callable[[], bool]:
    """`steps` steps of the count stage committed, the last tracked point 0.25 s old (past
    wandb's 0.1 s flush window) and the next one 0.35 s away: a kill between two steps."""

    def ready() -> bool:
        files = list(checkpoints.glob("count-*/state.json"))
        counted = len(json.loads(files[0].read_text() or "[]")) if files else 0
        return counted >= steps and time.time() - files[0].stat().st_mtime > 0.25

    return ready


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_resumed_stage_continues_its_tracker_run(write, tmp_path, backend):
    """A stage that tracks each step before committing it, killed after step 3 and run again:
    its run (same id, same group as the stage after it) holds every step."""
    n = 8
    recipe = write(tmp_path / "t.yaml", RECIPE.format(backend=backend, n=n, sleep=0.6))
    wd = tmp_path / "runs"
    cmd = [sys.executable, "-m", "recipe_runner.cli", "run", str(recipe), "--workdir", str(wd)]
    _run_and_kill(cmd, _env(tmp_path), _counted_and_quiet(wd / "tracked" / "checkpoints", 3), "step 3")
    first_id = _tracker_ids(wd)["count"]
    done = subprocess.run(cmd, env=dict(os.environ, **_env(tmp_path)), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    runs = read_tracker(backend, wd / "tracked" / "tracking", "tracked")
    assert len({r.group for rs in runs.values() for r in rs}) == 1  # run again, the recipe run goes on in its group
    count = runs["count"]
    assert {r.id for r in count} == {first_id}  # one run, continued (wandb: a file per process)
    assert len(count) == (2 if backend == "wandb" else 1)
    assert_one_point_per_step(count, "value", list(range(n)), backend)
    if backend == "wandb":
        assert min(count[-1].steps("value")) >= 3  # the resumed process logged only what it counted
    assert count[-1].final["resumed_from_step"] >= 3
    assert not _tracker_ids(wd)  # the checkpoint dir is gone after commit; the id lives on in the tracker run


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


STEPS, SAVE = 48, 3  # the kill lands long before the last step, even on a loaded machine
PRETRAIN = ["--set", f"stages.pretrain.params.max_steps={STEPS}", "--set", f"stages.pretrain.params.save_steps={SAVE}"]


def _checkpointed(checkpoints: Path) -> Callable[[], bool]:
    return lambda: bool(list(checkpoints.glob("pretrain-*/checkpoint-*/trainer_state.json")))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_real_recipe_is_tracked_and_a_killed_pretraining_continues_its_run(
    recipe_cli, tiny_pretrain_recipe, tmp_path, backend
):
    """source -> tokenize -> pack -> init -> pretrain, pretraining killed after its first
    checkpoint and run again: one group, a run per stage with the stage's final metrics, and
    pretraining's loss at every step in the run the killed process opened."""
    wd, uri = tmp_path / "runs", (tmp_path / "mlruns").as_uri()
    sets = ["--set", f"tracking.backend={backend}", *PRETRAIN]
    sets += ["--set", f"tracking.dir={uri}"] if backend == "mlflow" else []  # a tracking URI of its own
    cmd = [sys.executable, "-m", "recipe_runner.cli", "run", str(tiny_pretrain_recipe), "--workdir", str(wd), *sets]
    _run_and_kill(cmd, _env(tmp_path), _checkpointed(wd / "ddp-tiny" / "checkpoints"), "a checkpoint")
    first_id = _tracker_ids(wd)["pretrain"]
    done = recipe_cli("run", str(tiny_pretrain_recipe), "--workdir", str(wd), *sets, env=_env(tmp_path), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    stages = {s["name"]: s for s in json.loads((wd / "ddp-tiny" / "manifest.json").read_text())["stages"]}
    assert SAVE <= stages["pretrain"]["metrics"]["resumed_from_step"] < STEPS

    runs = read_tracker(backend, wd / "ddp-tiny" / "tracking", "ddp-tiny", uri)
    assert sorted(runs) == sorted(stages)  # a run per stage, data stages included
    assert len({r.group for rs in runs.values() for r in rs}) == 1  # one group: the recipe run
    for name, stage in stages.items():
        assert len({r.id for r in runs[name]}) == 1, name
        assert_final_metrics(runs[name][-1], stage["metrics"])
    assert runs["pack"][0].final["rows"] > 0
    pretrain = runs["pretrain"]
    assert pretrain[0].id == first_id and len(pretrain) == (2 if backend == "wandb" else 1)
    assert_one_point_per_step(pretrain, "loss", list(range(1, STEPS + 1)), backend)
    assert pretrain[-1].steps("loss") == list(range(1, STEPS + 1))  # wandb too: the checkpoint's points sent again
    model = wd / "ddp-tiny" / "stages" / f"pretrain-{stages['pretrain']['fingerprint'][:12]}" / "outputs" / "model"
    trained = {h["step"]: h["loss"] for h in json.loads((model / "trainer_history.json").read_text()) if "loss" in h}
    tracked = {s: v for s, k, v in pretrain[-1].points if k == "loss"}
    assert tracked.keys() == trained.keys()  # the values too: the loss each step trained with
    assert all(math.isclose(tracked[s], trained[s], rel_tol=1e-4) for s in trained), (tracked, trained)
    assert STEPS in pretrain[-1].steps("eval_loss")


def test_mlflow_takes_any_metric_name_and_a_resumed_failed_run(tmp_path):
    """Names mlflow refuses (a source `wiki (en)`, lm-eval's `acc,none`) and nested metrics reach
    the run; a failed stage's run is FAILED, and RUNNING again once the stage is resumed."""
    from mlflow.tracking import MlflowClient

    from recipe_runner.tracking import Tracking, TrackingSpec

    uri = (tmp_path / "mlruns").as_uri()
    tracking = Tracking(TrackingSpec(backend="mlflow", dir=uri), "r", tmp_path / "run")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    run = tracking.open("eval", "eval", ckpt, {"tasks": ["hellaswag"]})
    run.log(1, {"acc,none": 0.25, "documents.wiki (en)": 3, "note": "text"})
    run.finish({"scores": {"acc,none": 0.5}, "ok": True}, failed=True)
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run.run_id).info.status == "FAILED"
    again = Tracking(TrackingSpec(backend="mlflow", dir=uri), "r", tmp_path / "run").open("eval", "eval", ckpt, {})
    assert again.run_id == run.run_id and client.get_run(run.run_id).info.status == "RUNNING"
    again.log(1, {"acc,none": 0.25})  # sent again after the resume: kept once
    again.finish({})
    stored = client.get_run(run.run_id).data.metrics
    assert stored == {"acc_none": 0.25, "documents.wiki _en_": 3.0, "final/scores.acc_none": 0.5}
    assert len(client.get_metric_history(run.run_id, "acc_none")) == 1
    assert client.get_run(run.run_id).info.status == "FINISHED"
