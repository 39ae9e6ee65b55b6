"""Experiment tracking for the whole recipe: every stage (data stages too)
logs its metrics to the tracker the recipe names, one tracker run per stage,
grouped under one group / experiment per ``recipe run``; a resumed stage
continues its tracker run (the run id is kept in the stage's checkpoint dir).

Stages report time series with ``ctx.track(step, {...})`` (the training
stages do it from their Trainer callbacks); the engine adds each stage's
final metrics.  Backends: wandb, mlflow, tensorboard, all usable offline:
wandb in offline mode, mlflow with a local ``file:`` store, tensorboard event
files; libraries come with ``pip install "recipe-runner[tracking]"``."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: the package each backend needs
PACKAGES = {"wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard"}


class TrackingSpec(BaseModel):
    """The recipe's ``tracking:`` block."""

    model_config = ConfigDict(extra="forbid")
    backend: Literal["wandb", "mlflow", "tensorboard"] = Field(description="where metrics go")
    project: str | None = Field(None, description="wandb project / mlflow experiment (default: the recipe's name)")
    dir: str | None = Field(
        None, description="where offline runs are written (default: WORKDIR/RECIPE/tracking); mlflow: a tracking URI"
    )
    offline: bool = Field(True, description="wandb: offline mode (sync later with `wandb sync`)")


def missing_package(spec: TrackingSpec) -> str | None:
    """The pip command to run when the backend's library is not installed."""
    package = PACKAGES[spec.backend]
    if importlib.util.find_spec(package) is None:
        return f'tracking backend {spec.backend!r} needs {package}: pip install "recipe-runner[tracking]"'
    return None


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    }


@dataclass(frozen=True)
class RunRequest:
    stage: str
    stage_type: str
    group: str
    run_id: str | None  # set when resuming
    config: dict[str, Any]


class StageTracker:
    """One stage's tracker run."""

    run_id: str

    def log(self, step: int, metrics: Mapping[str, Any]) -> None: ...

    def finish(self, metrics: Mapping[str, Any]) -> None: ...


class Tracking:
    """The tracker of one ``recipe run``: opens a run per stage."""

    def __init__(self, spec: TrackingSpec, recipe: str, run_root: Path):
        self.spec, self.recipe = spec, recipe
        self.project = spec.project or recipe
        self.dir = Path(spec.dir) if spec.dir and spec.backend != "mlflow" else run_root / "tracking"
        self.group = f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"

    def open(self, stage: str, stage_type: str, checkpoint_dir: Path, config: Mapping[str, Any]) -> StageTracker:
        """The stage's run: a new one, or the one its checkpoint dir names (resume)."""
        saved = checkpoint_dir / "tracker.json"
        state = json.loads(saved.read_text()) if saved.is_file() else {}
        group = state.get("group", self.group)
        opener = {"wandb": _WandbRun, "mlflow": _MlflowRun, "tensorboard": _TensorBoardRun}[self.spec.backend]
        run = opener(self, RunRequest(stage, stage_type, group, state.get("run_id"), dict(config)))
        saved.write_text(json.dumps({"group": group, "run_id": run.run_id, "backend": self.spec.backend}))
        return run


class _WandbRun(StageTracker):
    def __init__(self, t: Tracking, r: RunRequest):
        import wandb

        t.dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=t.project,
            group=r.group,
            name=r.stage,
            job_type=r.stage_type,
            id=r.run_id,
            resume="allow",
            mode="offline" if t.spec.offline else "online",
            dir=str(t.dir),
            config=r.config,
            reinit="create_new",
        )
        self.run_id = self.run.id

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.run.log(_numeric(metrics), step=step)

    def finish(self, metrics: Mapping[str, Any]) -> None:
        self.run.summary.update(_numeric(metrics))
        self.run.finish()


class _MlflowRun(StageTracker):
    def __init__(self, t: Tracking, r: RunRequest):
        from mlflow.tracking import MlflowClient

        uri = t.spec.dir or (t.dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):  # the offline store: still supported, now opt-in in mlflow
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(t.project)
        exp_id = experiment.experiment_id if experiment else self.client.create_experiment(t.project)
        run_id = r.run_id
        if run_id is None:
            tags = {"mlflow.runName": r.stage, "recipe_runner.group": r.group, "recipe_runner.stage_type": r.stage_type}
            run_id = self.client.create_run(exp_id, tags=tags).info.run_id
            for k, v in list(_flat(r.config).items())[:100]:
                self.client.log_param(run_id, k, str(v)[:500])
        self.run_id = run_id

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        for k, v in _numeric(metrics).items():
            self.client.log_metric(self.run_id, k, v, step=step)

    def finish(self, metrics: Mapping[str, Any]) -> None:
        for k, v in _numeric(metrics).items():
            self.client.log_metric(self.run_id, f"final/{k}", v)
        self.client.set_terminated(self.run_id)


class _TensorBoardRun(StageTracker):
    def __init__(self, t: Tracking, r: RunRequest):
        from torch.utils.tensorboard import SummaryWriter

        self.run_id = r.run_id or f"{r.group}/{r.stage}"
        self.writer = SummaryWriter(log_dir=str(t.dir / "tensorboard" / self.run_id))
        self.writer.add_text("params", "```\n" + json.dumps(r.config, indent=1, default=str) + "\n```")

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        for k, v in _numeric(metrics).items():
            self.writer.add_scalar(k, v, step)

    def finish(self, metrics: Mapping[str, Any]) -> None:
        for k, v in _numeric(metrics).items():
            self.writer.add_scalar(f"final/{k}", v, 0)
        self.writer.close()


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
