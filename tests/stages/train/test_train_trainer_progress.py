"""trainer_progress.py: the progress callback's history and tracked points,
and the loss curve PNG."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from recipe_runner.stage import StageContext, StageError
from recipe_runner_stages.train.trainer_args import TrainingParams
from recipe_runner_stages.train.trainer_progress import history_summary, progress_callback, save_loss_curve

MakeContext = Callable[..., StageContext[Any]]


class _Tracker:
    """An experiment tracker that keeps what it is sent."""

    def __init__(self) -> None:
        self.points: list[tuple[int, dict[str, Any]]] = []

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.points.append((step, dict(metrics)))


def test_logged_points_are_kept_and_tracked(make_context: MakeContext) -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    ctx = make_context(TrainingParams())
    ctx.tracker = _Tracker()
    callback = progress_callback(ctx, "train")
    args = TrainingArguments(output_dir=str(ctx.checkpoint_dir), use_cpu=True, report_to="none")
    for step, loss in ((10, 3.5), (20, 2.5)):
        state = TrainerState(global_step=step)
        callback.on_log(args, state, TrainerControl(), logs={"loss": loss, "learning_rate": 1e-3, "note": "text"})
    assert callback.history == [
        {"step": 10, "loss": 3.5, "learning_rate": 1e-3},
        {"step": 20, "loss": 2.5, "learning_rate": 1e-3},
    ]
    assert ctx.tracker.points == [
        (10, {"loss": 3.5, "learning_rate": 1e-3}),
        (20, {"loss": 2.5, "learning_rate": 1e-3}),
    ]
    assert history_summary(callback.history, ["loss", "grad_norm"]) == {"loss_first": 3.5, "loss_last": 2.5}


@pytest.mark.parametrize("logs", [{"loss": float("nan")}, {"loss": 2.0, "grad_norm": float("inf")}])
def test_a_non_finite_loss_or_gradient_norm_stops_training_at_its_step(
    make_context: MakeContext, logs: dict[str, float]
) -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    ctx = make_context(TrainingParams(), name="sft")
    callback = progress_callback(ctx, "train")
    args = TrainingArguments(output_dir=str(ctx.checkpoint_dir), use_cpu=True, report_to="none")
    callback.on_log(args, TrainerState(global_step=4), TrainerControl(), logs={"loss": 3.0, "grad_norm": 1.0})
    with pytest.raises(StageError, match=r"sft: training diverged at step 7 \((loss=nan|grad_norm=inf)\)"):
        callback.on_log(args, TrainerState(global_step=7), TrainerControl(), logs=logs)


def test_non_finite_weights_stop_training_before_a_checkpoint_save(make_context: MakeContext) -> None:
    import torch
    from transformers import TrainerControl, TrainerState, TrainingArguments

    ctx = make_context(TrainingParams(), name="pretrain")
    callback = progress_callback(ctx, "train")
    args = TrainingArguments(output_dir=str(ctx.checkpoint_dir), use_cpu=True, report_to="none")
    model = torch.nn.Linear(2, 2)
    saving = TrainerControl(should_save=True)
    callback.on_step_end(args, TrainerState(global_step=5), saving, model=model)  # finite: nothing happens
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    callback.on_step_end(args, TrainerState(global_step=6), TrainerControl(), model=model)  # not a save step
    with pytest.raises(StageError, match="pretrain: training diverged by step 6 \\(non-finite weights\\)"):
        callback.on_step_end(args, TrainerState(global_step=6), saving, model=model)


def test_loss_curve_png(tmp_path: Path) -> None:
    history = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}, {"step": 2, "eval_loss": 2.7}]
    png = save_loss_curve(history, tmp_path / "plots" / "loss.png")
    assert png == tmp_path / "plots" / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert save_loss_curve([{"step": 1, "learning_rate": 1e-3}], tmp_path / "none.png") is None
