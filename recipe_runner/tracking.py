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
import re
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
    """The finite numbers among the metrics, nested ones as ``outer.inner``."""
    return {
        k: float(v)
        for k, v in _flat(metrics).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def _mlflow_key(key: str) -> str:
    """A metric name mlflow takes: it refuses characters beyond ``[/\\w.\\- ]`` (a source named
    ``wiki (en)`` gives ``documents.wiki (en)``) and names that are not normal paths."""
    parts = [p for p in re.sub(r"[^/\w.\- ]", "_", key).split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "_"


@dataclass(frozen=True)
class RunRequest:
    stage: str
    stage_type: str
    group: str
    run_id: str | None  # set when resuming
    config: dict[str, Any]


class StageTracker:
    """One stage's tracker run.  ``log`` hands a point to the tracker before it
    returns, written where a SIGKILL of the process keeps it (wandb: within
    its ``WANDB_FLUSH_S`` window), so a stage that tracks a step before
    committing it delivers every step at least once across a kill and resume."""

    run_id: str

    def log(self, step: int, metrics: Mapping[str, Any]) -> None: ...

    def finish(self, metrics: Mapping[str, Any], failed: bool = False) -> None: ...


class Tracking:
    """The tracker of one ``recipe run``: opens a run per stage."""

    def __init__(self, spec: TrackingSpec, recipe: str, run_root: Path):
        self.spec, self.recipe = spec, recipe
        self.project = spec.project or recipe
        self.dir = Path(spec.dir) if spec.dir and spec.backend != "mlflow" else run_root / "tracking"
        self.group = f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.where = [spec.backend, self.project, spec.dir or str(self.dir)]  # a saved run id means something here
        self.opened = False

    def open(self, stage: str, stage_type: str, checkpoint_dir: Path, config: Mapping[str, Any]) -> StageTracker:
        """The stage's run: a new one, or the one its checkpoint dir names (resume)."""
        saved = checkpoint_dir / "tracker.json"
        state = json.loads(saved.read_text()) if saved.is_file() else {}
        if state.get("where", self.where) != self.where or state.get("backend") != self.spec.backend:
            state = {}  # another tracker (or another store) since: a new run there
        if "group" in state and not self.opened:
            self.group = state["group"]  # a killed recipe run run again goes on in its group
        self.opened = True
        group = state.get("group", self.group)
        opener = {"wandb": _WandbRun, "mlflow": _MlflowRun, "tensorboard": _TensorBoardRun}[self.spec.backend]
        run = opener(self, RunRequest(stage, stage_type, group, state.get("run_id"), dict(config)))
        record = {"group": group, "run_id": run.run_id, "backend": self.spec.backend, "where": self.where}
        saved.write_text(json.dumps(record))
        return run


#: seconds between wandb-core's writes of the offline run file (its default, 15 s,
#: loses the last 15 s of points to a SIGKILL)
WANDB_FLUSH_S = 0.1


class _WandbRun(StageTracker):
    def __init__(self, t: Tracking, r: RunRequest):
        import wandb

        t.dir.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings()
        if "x_transaction_log_flush_interval" in wandb.Settings.model_fields:  # wandb >= 0.2x
            settings.x_transaction_log_flush_interval = WANDB_FLUSH_S
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
            settings=settings,
        )
        self.run_id = self.run.id
        # each point is its own history row, plotted against the stage's step: a row for a step is
        # written at once (wandb keeps a row open until a later step comes, and a kill loses it), and
        # a resumed run may log steps again (wandb drops a step below its last one)
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.run.log({**_numeric(metrics), "step": step})

    def finish(self, metrics: Mapping[str, Any], failed: bool = False) -> None:
        self.run.summary.update(_numeric(metrics))
        self.run.finish(exit_code=1 if failed else 0)


class _MlflowRun(StageTracker):
    def __init__(self, t: Tracking, r: RunRequest):
        from mlflow.tracking import MlflowClient

        uri = t.spec.dir or (t.dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:") or "://" not in uri:  # the offline store: still supported, now opt-in
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
        else:  # killed (still RUNNING) or failed: running again
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        self.resumed = r.run_id is not None
        self._stored: dict[str, set[int]] = {}  # resumed: steps of each metric the run holds already

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        now, points = int(time.time() * 1000), []
        for name, v in _numeric(metrics).items():
            k = _mlflow_key(name)
            if self.resumed and k not in self._stored:
                self._stored[k] = {m.step for m in self.client.get_metric_history(self.run_id, k)}
            if step not in self._stored.get(k, ()):  # a step logged again after a resume is kept once
                points.append(Metric(k, v, now, step))
        if points:  # one write for the step's metrics
            self.client.log_batch(self.run_id, metrics=points)

    def finish(self, metrics: Mapping[str, Any], failed: bool = False) -> None:
        for k, v in _numeric(metrics).items():
            self.client.log_metric(self.run_id, _mlflow_key(f"final/{k}"), v)
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


class _TensorBoardRun(StageTracker):
    def __init__(self, t: Tracking, r: RunRequest):
        self.run_id = r.run_id or f"{r.group}/{r.stage}"
        self.log_dir = t.dir / "tensorboard" / self.run_id
        self.writer: Any = None
        if r.run_id is None:
            self._open(None).add_text("params", "```\n" + json.dumps(r.config, indent=1, default=str) + "\n```")

    def _open(self, purge_step: int | None) -> Any:
        """The event file, opened at the first point: a resumed run's file starts with a restart
        marker at that step, so TensorBoard drops the steps the killed run logged from it on."""
        from torch.utils.tensorboard import SummaryWriter

        if self.writer is None:
            self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)
        return self.writer

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        writer = self._open(step)
        for k, v in _numeric(metrics).items():
            writer.add_scalar(k, v, step)
        writer.flush()  # the writer's queue otherwise holds points for up to 2 minutes

    def finish(self, metrics: Mapping[str, Any], failed: bool = False) -> None:
        writer = self._open(None)
        for k, v in _numeric(metrics).items():
            writer.add_scalar(f"final/{k}", v, 0)
        writer.close()


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
