"""What pretrain measures: validation perplexity next to each validation loss,
throughput (tokens/s, CPU time), the first and last training loss, the final
validation loss and perplexity, and the loss curves (downsampled) for the
stage's metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from recipe_runner import StageContext

#: losses above this are reported as perplexity exp(50) (overflow guard)
MAX_LOSS_FOR_PERPLEXITY = 50.0


def perplexity(loss: float) -> float:
    return math.exp(min(loss, MAX_LOSS_FOR_PERPLEXITY))


@dataclass
class TrainingOutcome:
    """What one run of the trainer (or a checkpoint that had already finished) leaves."""

    start_step: int
    global_step: int
    history: list[dict[str, Any]]
    train_loss: float | None
    runtime_s: float
    cpu_s: float


def perplexity_callback(ctx: StageContext[Any]) -> Any:
    """A TrainerCallback adding the validation perplexity next to each periodic validation loss."""
    from transformers import TrainerCallback

    class _Perplexity(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kw):
            if metrics and "eval_loss" in metrics:
                ppl = perplexity(metrics["eval_loss"])
                metrics["eval_perplexity"] = ppl
                ctx.log.info(
                    "step %d: validation loss %.4f, perplexity %.2f", state.global_step, metrics["eval_loss"], ppl
                )

    return _Perplexity()


def training_metrics(outcome: TrainingOutcome, tokens_per_step: int, seq_len: int, train_rows: int) -> dict[str, Any]:
    """Steps, losses, throughput and sizes of a training run."""
    steps_run = outcome.global_step - outcome.start_step
    runtime = outcome.runtime_s
    tok_s = steps_run * tokens_per_step / runtime if runtime > 0 else 0.0
    return {
        "global_step": outcome.global_step,
        "steps_this_run": steps_run,
        **({"train_loss": outcome.train_loss} if outcome.train_loss is not None else {}),
        "train_runtime_s": round(runtime, 3),
        "train_cpu_s": round(outcome.cpu_s, 3),  # this process's CPU time in trainer.train (load-independent)
        "tokens_per_second": round(tok_s, 1),
        "tokens_trained": outcome.global_step * tokens_per_step,
        "seq_len": seq_len,
        "train_rows": train_rows,
    }


def final_validation(trainer: Any, history: list[dict[str, Any]], global_step: int, rows: int) -> dict[str, Any]:
    """Validation loss and perplexity after training (appended to the history),
    or those of the periodic validation that already ran at the last step."""
    ev = next((h for h in reversed(history) if h.get("step") == global_step and "eval_loss" in h), None)
    if ev is None:
        ev = trainer.evaluate()
        history.append({"step": global_step, **ev})
    return {
        "eval_loss": float(ev["eval_loss"]),
        "perplexity": float(perplexity(ev["eval_loss"])),
        "validation_rows": rows,
    }


def train_loss_ends(history: list[dict[str, Any]]) -> dict[str, float]:
    """The first and last logged training loss (rounded as in the curve)."""
    losses = [round(h["loss"], 4) for h in history if "loss" in h]
    return {"final_train_loss": losses[-1], "first_train_loss": losses[0]} if losses else {}


def loss_curves(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The curves [step, loss] and (with validation) [step, validation loss,
    perplexity], each downsampled to at most 60 points."""
    losses = [[h["step"], round(h["loss"], 4)] for h in history if "loss" in h]
    by_step = {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}  # final eval may repeat a step
    evals = [[step, round(loss, 4), round(perplexity(loss), 3)] for step, loss in by_step.items()]
    out: dict[str, Any] = {"loss_curve": downsample(losses)}
    if evals:
        out["eval_curve"] = downsample(evals)
    return out


def downsample(points: list[list[float]], n: int = 60) -> list[list[float]]:
    if len(points) <= n:
        return points
    step = (len(points) - 1) / (n - 1)
    return [points[round(i * step)] for i in range(n)]


def log_summary(ctx: StageContext[Any], metrics: dict[str, Any]) -> None:
    validation = (
        f", validation loss {metrics['eval_loss']:.4f} (ppl {metrics['perplexity']:.2f})"
        if "eval_loss" in metrics
        else ""
    )
    loss = metrics.get("final_train_loss", metrics.get("train_loss"))
    train = f", train loss {loss:.4f}" if loss is not None else " (no train loss logged: logging_steps > steps)"
    ctx.log.info(
        "pretrain: %d steps, %.0f tokens/s%s%s",
        metrics["global_step"],
        metrics["tokens_per_second"],
        train,
        validation,
    )
