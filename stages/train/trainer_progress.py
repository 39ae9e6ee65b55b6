"""How a Trainer-backed stage reports while and after it trains: a trainer
callback that drives the runner's progress display, keeps the log history and
sends each logged point to the recipe's experiment tracker, the stop at the
first non-finite loss or gradient norm (before a checkpoint or the output
holds the broken weights), the first and last value of logged quantities,
and the loss curve as a PNG."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from recipe_runner import StageContext, StageError
from recipe_runner.stage import Progress

#: logged quantities whose non-finite value means training has diverged
DIVERGENCE_KEYS = ("loss", "grad_norm", "pg_loss", "vf_loss")


def stop_at_non_finite(stage: str, step: int, logs: Mapping[str, Any]) -> None:
    """Raise a StageError naming the step when a loss or gradient norm in
    ``logs`` is NaN or infinite."""
    bad = {k: v for k, v in logs.items() if k in DIVERGENCE_KEYS and isinstance(v, float) and not math.isfinite(v)}
    if bad:
        found = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise StageError(
            f"{stage}: training diverged at step {step} ({found}); stopped, nothing committed, the last "
            "checkpoint before it is kept (lower learning_rate, set max_grad_norm, or check the data)"
        )


def stop_at_non_finite_weights(stage: str, step: int, params: Iterable[Any]) -> None:
    """Raise a StageError naming the step when a weight is NaN or infinite
    (checked before a checkpoint is written and at the end of training)."""
    import torch

    if not all(bool(torch.isfinite(w).all()) for w in params if w.is_floating_point()):
        raise StageError(
            f"{stage}: training diverged by step {step} (non-finite weights); stopped, nothing committed, "
            "the last checkpoint before it is kept (lower learning_rate, set max_grad_norm, or check the data)"
        )


def resend_checkpointed_points(ctx: StageContext[Any], log_history: list[dict[str, Any]]) -> None:
    """Send the points a resumed checkpoint logged to the experiment tracker
    again: a killed process may not have handed the last of them over (a
    tracker buffers), so each step reaches the tracker at least once; the
    trackers keep a step sent twice once where they can (mlflow, tensorboard)."""
    for entry in log_history:
        values = {k: v for k, v in entry.items() if k != "step" and isinstance(v, (int, float))}
        if "step" in entry and values:
            ctx.track(int(entry["step"]), values)


def progress_callback(ctx: StageContext[Any], description: str) -> Any:
    """A TrainerCallback that drives the runner's progress display, keeps the
    log history (loss, eval loss, learning rate) for the stage's metrics,
    sends each logged point to the experiment tracker (``ctx.track``) and
    stops training at the first non-finite loss or gradient norm (and at
    non-finite weights before a checkpoint save and at the end)."""
    from transformers import TrainerCallback

    class _Callback(TrainerCallback):
        def __init__(self) -> None:
            self.history: list[dict[str, Any]] = []
            self._cm: AbstractContextManager[Progress] | None = None
            self._bar: Progress | None = None

        def on_train_begin(self, args, state, control, **kw):
            self._cm = ctx.progress(description, total=state.max_steps)
            self._bar = self._cm.__enter__()
            self._bar.update(state.global_step)
            if state.global_step:  # resumed: the checkpoint's points again, for a tracker that lost them
                resend_checkpointed_points(ctx, state.log_history)

        def on_step_end(self, args, state, control, model=None, **kw):
            if self._bar is not None:
                self._bar.update(state.global_step)
            if control.should_save and model is not None:
                stop_at_non_finite_weights(ctx.name, state.global_step, model.parameters())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs:
                values = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
                self.history.append({"step": state.global_step, **values})
                ctx.log.debug("step %d: %s", state.global_step, ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
                ctx.track(state.global_step, values)
                stop_at_non_finite(ctx.name, state.global_step, values)

        def on_train_end(self, args, state, control, model=None, **kw):
            if self._cm is not None:
                self._cm.__exit__(None, None, None)
                self._cm = None
            if model is not None:
                stop_at_non_finite_weights(ctx.name, state.global_step, model.parameters())

    return _Callback()


def quiet_trainer(trainer: Any) -> Any:
    """Drop the trainer's PrinterCallback: the progress callback logs the same lines."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def history_summary(history: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """First and last logged value of each key (e.g. loss) from a trainer log history."""
    out: dict[str, Any] = {}
    for k in keys:
        vals = [h[k] for h in history if k in h]
        if vals:
            key = k.replace("/", "_")
            out[f"{key}_first"] = float(vals[0])
            out[f"{key}_last"] = float(vals[-1])
    return out


def save_loss_curve(history: list[dict[str, Any]], png: Path, title: str = "loss") -> Path | None:
    """Plot training (and validation) loss against step to a PNG."""
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


logging.getLogger("matplotlib").setLevel(logging.WARNING)
