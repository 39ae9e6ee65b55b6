"""The resume point of a Trainer-backed stage: the newest trainer checkpoint
in the stage's checkpoint directory, the state the trainer saved there, and
training that resumes from it."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from recipe_runner import StageContext


def last_checkpoint(ctx: StageContext[Any]) -> str | None:
    """The newest trainer checkpoint in the stage's checkpoint dir, logged
    with its step so a resume is visible in the run's log."""
    from transformers.trainer_utils import get_last_checkpoint

    if not Path(ctx.checkpoint_dir).is_dir():
        return None
    ckpt = get_last_checkpoint(str(ctx.checkpoint_dir))
    if ckpt:
        step = ckpt.rsplit("-", 1)[-1]
        ctx.log.info("resuming from checkpoint %s (step %s)", ckpt, step)
        ctx.metrics["resumed_from_step"] = int(step) if step.isdigit() else step
    return ckpt


def trainer_state(checkpoint: str | None) -> dict[str, Any]:
    """The ``trainer_state.json`` of a checkpoint (global step, log history),
    empty without one."""
    if not checkpoint:
        return {}
    state: dict[str, Any] = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return state


def train_from_last_checkpoint(
    ctx: StageContext[Any], trainer: Any, measure_before: Callable[[], Mapping[str, Any]] | None = None
) -> Any:
    """``trainer.train()``, resumed from the newest checkpoint when there is
    one; on a fresh start ``measure_before`` (held-out numbers of the
    untrained model) runs first and its metrics are kept.  Adds train_loss and
    train_steps to the stage's metrics and returns the TrainOutput."""
    resume = last_checkpoint(ctx)
    if measure_before is not None and resume is None:
        ctx.metrics.update(measure_before())
    result = trainer.train(resume_from_checkpoint=resume)
    ctx.metrics.update(train_loss=float(result.training_loss), train_steps=int(result.global_step))
    return result
