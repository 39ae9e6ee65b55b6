"""common/training.py: the recipe's training parameters as TrainingArguments,
the newest checkpoint as the resume point, and the loss curve."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from recipe_runner.stage import StageContext
from recipe_runner_stages.common.training import (
    TrainingParams,
    last_checkpoint,
    save_loss_curve,
    training_arguments_kwargs,
)

MakeContext = Callable[..., StageContext[Any]]


def test_training_arguments_on_a_cpu(tmp_path: Path, make_context: MakeContext) -> None:
    from transformers import TrainingArguments

    p = TrainingParams(max_steps=3, precision="auto", device="cpu", warmup_ratio=0.1, eval_steps=2)
    kw = training_arguments_kwargs(p, make_context(p), has_eval=True)
    args = TrainingArguments(**kw)
    assert args.output_dir == str(tmp_path / "ckpt")
    assert (args.max_steps, args.seed, args.data_seed) == (3, 5, 5)
    assert args.use_cpu and not args.bf16 and not args.fp16
    assert kw["warmup_steps"] == 0.1  # no warmup_steps: the ratio
    assert kw["eval_strategy"] == "steps" and kw["report_to"] == "none"
    no_eval = training_arguments_kwargs(p, make_context(p), has_eval=False)
    assert no_eval["eval_strategy"] == "no"


def test_the_newest_checkpoint_is_the_resume_point(tmp_path: Path, make_context: MakeContext) -> None:
    ctx = make_context(TrainingParams())
    assert last_checkpoint(ctx) is None
    for step in (5, 20, 10):
        (tmp_path / "ckpt" / f"checkpoint-{step}").mkdir(parents=True)
    assert last_checkpoint(ctx) == str(tmp_path / "ckpt" / "checkpoint-20")
    assert ctx.metrics["resumed_from_step"] == 20


def test_loss_curve_png(tmp_path: Path) -> None:
    history = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}, {"step": 2, "eval_loss": 2.7}]
    png = save_loss_curve(history, tmp_path / "plots" / "loss.png")
    assert png == tmp_path / "plots" / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert save_loss_curve([{"step": 1, "learning_rate": 1e-3}], tmp_path / "none.png") is None
