"""checkpoints.py: the newest trainer checkpoint is the resume point."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from recipe_runner.stage import StageContext
from recipe_runner_stages.train.checkpoints import last_checkpoint
from recipe_runner_stages.train.trainer_args import TrainingParams

MakeContext = Callable[..., StageContext[Any]]


def test_the_newest_checkpoint_is_the_resume_point(tmp_path: Path, make_context: MakeContext) -> None:
    ctx = make_context(TrainingParams())
    assert last_checkpoint(ctx) is None
    for step in (5, 20, 10):
        (tmp_path / "ckpt" / f"checkpoint-{step}").mkdir(parents=True)
    assert last_checkpoint(ctx) == str(tmp_path / "ckpt" / "checkpoint-20")
    assert ctx.metrics["resumed_from_step"] == 20
