"""The training parameters every Trainer-backed stage accepts (pretrain, sft,
reward, dpo) and their mapping onto transformers' ``TrainingArguments`` (trl's
configs subclass it): one place, with the stage's checkpoint directory as the
trainer's output directory so checkpoints survive a crash."""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from recipe_runner import Params, StageContext, StageError, per_process
from recipe_runner.launch import LaunchSpec

from ..common.devices import Device, Precision, cpu_threads_field, resolve_device, resolve_precision

ReportTarget = Literal["none", "wandb", "tensorboard", "mlflow"]


#: the package each report_to integration of transformers needs
TRACKER_PACKAGES: dict[str, str] = {"wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow"}


def _report_nowhere() -> list[ReportTarget]:
    return ["none"]


class TrainingParams(Params):
    """Fields every trainer-backed stage accepts (names as in transformers);
    infinite and NaN floats are refused."""

    model_config = ConfigDict(allow_inf_nan=False)

    max_steps: int = Field(-1, ge=-1, description="optimizer steps to run (>= 1); -1 trains for num_train_epochs")
    num_train_epochs: float = Field(1.0, gt=0, description="epochs when max_steps is -1")
    per_device_train_batch_size: int = per_process(2, ge=1)
    per_device_eval_batch_size: int = Field(2, ge=1)
    gradient_accumulation_steps: int = per_process(1, ge=1)
    learning_rate: float = Field(5e-5, gt=0)
    lr_scheduler_type: Literal[
        "linear", "cosine", "constant", "constant_with_warmup", "cosine_with_min_lr", "inverse_sqrt", "polynomial"
    ] = "linear"
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping norm (0: no clipping)")
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

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, value: list[ReportTarget]) -> list[ReportTarget]:
        missing = [t for t in value if t in TRACKER_PACKAGES and importlib.util.find_spec(TRACKER_PACKAGES[t]) is None]
        if missing:
            raise ValueError(
                f"report_to {', '.join(missing)}: not installed; install the trackers with "
                'pip install "recipe-runner[tracking]"'
            )
        return value

    @field_validator("max_steps")
    @classmethod
    def _steps_or_epochs(cls, value: int) -> int:
        if value == 0:
            raise ValueError("max_steps must be at least 1, or -1 to train for num_train_epochs")
        return value


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
        "logging_nan_inf_filter": False,  # a NaN loss must reach the progress callback, which stops on it
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
    kw.update(_checkpointing_kwargs(p.gradient_checkpointing))
    kw.update(_distributed_kwargs(p, ctx.launch, device))
    if device == "cpu" and kw.get("fsdp"):
        from .cpu_fsdp import configure_fsdp_on_cpu

        kw.update(configure_fsdp_on_cpu(kw, ctx))
    return kw


def _checkpointing_kwargs(enabled: bool) -> dict[str, Any]:
    """Activation (gradient) checkpointing under the name this transformers
    release knows: transformers 5 renamed gradient_checkpointing to
    activation_checkpointing (the old name warns)."""
    from dataclasses import fields

    from transformers import TrainingArguments

    names = {f.name for f in fields(TrainingArguments)}
    arg = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    kw: dict[str, Any] = {arg: enabled}
    if enabled:
        kw[arg + "_kwargs"] = {"use_reentrant": False}
    return kw


def _distributed_kwargs(p: TrainingParams, launch: LaunchSpec | None, device: str) -> dict[str, Any]:
    """DeepSpeed / FSDP settings: the stage's raw ``deepspeed`` / ``fsdp``
    parameters when the recipe sets them, else the ``launch:`` block's strategy
    (a shipped preset or its raw config); nothing for DDP.  On CPU, ZeRO is
    refused: accelerate (the Trainer's engine) enables DeepSpeed only for GPUs
    and would silently train DDP instead.  FSDP2 runs on CPU too
    (stages/train/cpu_fsdp.py)."""
    if launch is not None and launch.strategy == "deepspeed" and device == "cpu":
        raise StageError(
            "strategy deepspeed needs GPUs: on CPU the Trainer (accelerate) would silently run plain DDP; "
            "use strategy: ddp or fsdp on CPU"
        )
    kw: dict[str, Any] = {}
    if p.deepspeed is not None:
        kw["deepspeed"] = p.deepspeed
    if p.fsdp:
        kw["fsdp"] = p.fsdp
        if p.fsdp_config:
            kw["fsdp_config"] = p.fsdp_config
    if kw or launch is None:
        return kw
    if launch.world_size() > 1:
        kw["ddp_find_unused_parameters"] = False  # every parameter that trains is used: skip the extra graph walk
    config = launch.strategy_config()
    if launch.strategy == "deepspeed":
        kw["deepspeed"] = config
    elif launch.strategy == "fsdp":
        kw["fsdp"] = True
        kw["fsdp_config"] = config
    return kw
