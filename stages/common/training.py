"""Training arguments and trainer callbacks shared by every training stage
(pretrain, sft, reward, dpo, ppo).  One place maps the recipe's training
parameters onto transformers' TrainingArguments (trl's configs subclass it),
resumes from the stage's checkpoint directory, and reports progress and the
loss curve back to the runner."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from recipe_runner.stage import Params, Progress, StageContext

from .devices import Device, Precision, cpu_threads_field, resolve_device, resolve_precision

ReportTarget = Literal["none", "wandb", "tensorboard", "mlflow"]


def _report_nowhere() -> list[ReportTarget]:
    return ["none"]


class TrainingParams(Params):
    """Fields every trainer-backed stage accepts (names as in transformers)."""

    max_steps: int = Field(-1, description="optimizer steps to run; -1 trains for num_train_epochs")
    num_train_epochs: float = Field(1.0, description="epochs when max_steps is -1")
    per_device_train_batch_size: int = Field(2, ge=1)
    per_device_eval_batch_size: int = Field(2, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(5e-5, gt=0)
    lr_scheduler_type: Literal[
        "linear", "cosine", "constant", "constant_with_warmup", "cosine_with_min_lr", "inverse_sqrt", "polynomial"
    ] = "linear"
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = 1.0
    optim: str = Field(
        "adamw_torch",
        description="transformers optimizer name (adamw_torch, adamw_torch_fused, adafactor, paged_adamw_8bit, ...)",
    )
    gradient_checkpointing: bool = False
    precision: Precision = Field("auto", description="bf16 where the device has it, else fp32")
    device: Device = "auto"
    cpu_threads: int | None = cpu_threads_field()
    logging_steps: int = Field(10, ge=1)
    save_steps: int = Field(100, ge=1, description="in-stage checkpoint every N steps (the resume point after a crash)")
    save_total_limit: int = Field(2, ge=1)
    eval_steps: int | None = Field(None, description="validation loss every N steps; None = only at the end")
    dataloader_num_workers: int = 0
    report_to: list[ReportTarget] = Field(default_factory=_report_nowhere)
    deepspeed: str | dict[str, Any] | None = Field(
        None, description="DeepSpeed config (path or inline); passed to TrainingArguments"
    )
    fsdp: str | None = Field(None, description="FSDP options string, e.g. 'full_shard auto_wrap'")
    fsdp_config: dict[str, Any] | None = None


def training_arguments_kwargs(p: TrainingParams, ctx: StageContext[Any], has_eval: bool) -> dict[str, Any]:
    """Keyword arguments for TrainingArguments (or a trl config) from the
    recipe's parameters; the output dir is the stage's checkpoint directory,
    so trainer checkpoints survive a crash and resume picks them up."""
    device = resolve_device(p.device)
    precision = resolve_precision(p.precision, device)
    report = [r for r in p.report_to if r != "none"] or "none"
    kw: dict[str, Any] = {
        "output_dir": str(ctx.checkpoint_dir),
        "max_steps": p.max_steps,
        "num_train_epochs": p.num_train_epochs,
        "per_device_train_batch_size": p.per_device_train_batch_size,
        "per_device_eval_batch_size": p.per_device_eval_batch_size,
        "gradient_accumulation_steps": p.gradient_accumulation_steps,
        "learning_rate": p.learning_rate,
        "lr_scheduler_type": p.lr_scheduler_type,
        "warmup_steps": p.warmup_steps if p.warmup_steps else p.warmup_ratio,
        "weight_decay": p.weight_decay,
        "max_grad_norm": p.max_grad_norm,
        "optim": p.optim,
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "use_cpu": device == "cpu",
        "logging_steps": p.logging_steps,
        "save_strategy": "steps",
        "save_steps": p.save_steps,
        "save_total_limit": p.save_total_limit,
        "eval_strategy": ("steps" if p.eval_steps else "no") if has_eval else "no",
        "eval_steps": p.eval_steps,
        "dataloader_num_workers": p.dataloader_num_workers,
        "report_to": report,
        "seed": ctx.seed,
        "data_seed": ctx.seed,
        "disable_tqdm": True,
        "save_only_model": False,
    }
    kw[_checkpointing_arg()] = p.gradient_checkpointing
    if p.gradient_checkpointing:
        kw[_checkpointing_arg() + "_kwargs"] = {"use_reentrant": False}
    if p.deepspeed is not None:
        kw["deepspeed"] = p.deepspeed
    if p.fsdp:
        kw["fsdp"] = p.fsdp
        if p.fsdp_config:
            kw["fsdp_config"] = p.fsdp_config
    return kw


def _checkpointing_arg() -> str:
    """transformers 5 renamed gradient_checkpointing to activation_checkpointing
    (the old name warns); older releases only know the old one."""
    from dataclasses import fields

    from transformers import TrainingArguments

    names = {f.name for f in fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


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


def progress_callback(ctx: StageContext[Any], description: str) -> Any:
    """A TrainerCallback that drives the runner's progress display and keeps
    the log history (loss, eval loss, learning rate) for the stage's metrics."""
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

        def on_step_end(self, args, state, control, **kw):
            if self._bar is not None:
                self._bar.update(state.global_step)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs:
                entry = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
                self.history.append(entry)
                ctx.log.info(
                    "step %d: %s", state.global_step, ", ".join(f"{k}={v:.4g}" for k, v in entry.items() if k != "step")
                )

        def on_train_end(self, args, state, control, **kw):
            if self._cm is not None:
                self._cm.__exit__(None, None, None)
                self._cm = None

    return _Callback()


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
