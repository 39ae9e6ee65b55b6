"""checkpoints.py: the newest complete trainer checkpoint is the resume point;
an incomplete one (interrupted while saving) is set aside with a warning."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from recipe_runner.stage import StageContext
from recipe_runner_stages.train.checkpoints import checkpoint_is_complete, last_checkpoint
from recipe_runner_stages.train.trainer_args import TrainingParams

MakeContext = Callable[..., StageContext[Any]]


def _saved_checkpoint(root: Path, step: int) -> Path:
    """A checkpoint dir with the files the Trainer writes, trainer_state.json last."""
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (path / name).write_bytes(b"x")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return path


def test_the_newest_checkpoint_is_the_resume_point(tmp_path: Path, make_context: MakeContext) -> None:
    ctx = make_context(TrainingParams())
    assert last_checkpoint(ctx) is None
    for step in (5, 20, 10):
        _saved_checkpoint(tmp_path / "ckpt", step)
    assert last_checkpoint(ctx) == str(tmp_path / "ckpt" / "checkpoint-20")
    assert ctx.metrics["resumed_from_step"] == 20


@pytest.mark.parametrize(
    "interrupt",
    [
        pytest.param(lambda p: (p / "trainer_state.json").unlink(), id="no-trainer-state"),
        pytest.param(lambda p: (p / "trainer_state.json").write_text('{"global_step": 2'), id="truncated-state"),
        pytest.param(lambda p: (p / "optimizer.pt").unlink(), id="no-optimizer"),
        pytest.param(lambda p: (p / "model.safetensors").unlink(), id="no-weights"),
    ],
)
def test_an_incomplete_last_checkpoint_is_set_aside(
    tmp_path: Path, make_context: MakeContext, caplog: pytest.LogCaptureFixture, interrupt: Callable[[Path], Any]
) -> None:
    ctx = make_context(TrainingParams())
    root = tmp_path / "ckpt"
    _saved_checkpoint(root, 10)
    last = _saved_checkpoint(root, 15)
    interrupt(last)
    assert not checkpoint_is_complete(last)
    with caplog.at_level(logging.WARNING):
        assert last_checkpoint(ctx) == str(root / "checkpoint-10")
    assert ctx.metrics["resumed_from_step"] == 10
    assert not last.exists() and (root / "incomplete" / "checkpoint-15").is_dir()
    assert "checkpoint-15 is incomplete" in caplog.text and "set aside" in caplog.text


def test_only_incomplete_checkpoints_means_a_fresh_start(tmp_path: Path, make_context: MakeContext) -> None:
    ctx = make_context(TrainingParams())
    (tmp_path / "ckpt" / "checkpoint-5").mkdir(parents=True)
    assert last_checkpoint(ctx) is None
    assert "resumed_from_step" not in ctx.metrics
