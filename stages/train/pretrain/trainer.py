"""How pretrain trains: where it resumes (a checkpoint that already reached
max_steps is taken as it is), the model it loads and prepares (float32
master weights, no KV cache, layer freezing), transformers' Trainer over the
packed rows, and the run itself."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipe_runner import StageContext, StageError

from ..checkpoints import last_checkpoint, trainer_state
from .metrics import TrainingOutcome
from .params import PretrainParams


@dataclass
class ResumePoint:
    """The newest trainer checkpoint (None: a fresh start), its trainer state,
    and whether it already reached max_steps (killed after the last save,
    before the output was written): then it is loaded instead of trained --
    resuming there would make transformers run one step past max_steps."""

    checkpoint: str | None = None
    state: dict[str, Any] = field(default_factory=dict)
    finished: bool = False

    @property
    def step(self) -> int:
        return int(self.state.get("global_step", 0)) if self.checkpoint else 0


def resume_point(ctx: StageContext[PretrainParams]) -> ResumePoint:
    ckpt = last_checkpoint(ctx)
    state = trainer_state(ckpt)
    max_steps = ctx.params.max_steps
    return ResumePoint(ckpt, state, bool(ckpt) and max_steps > 0 and state.get("global_step", 0) >= max_steps)


def stored_dtype(model_dir: Path) -> str:
    """The dtype the input model's config.json names (float32 when it names none)."""
    config_file = model_dir / "config.json"
    cfg = json.loads(config_file.read_text()) if config_file.is_file() else {}
    return str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")


def load_model_tokenizer(model_dir: Path) -> Any:
    """The tokenizer the input model directory carries, or None."""
    from ...common.models import load_tokenizer

    if (model_dir / "tokenizer_config.json").exists() or (model_dir / "tokenizer.json").exists():
        return load_tokenizer(model_dir)
    return None


def load_model_to_train(model_dir: Path, resume: ResumePoint) -> Any:
    """The model in float32: the input model, or the finished checkpoint's."""
    import torch
    from transformers import AutoModelForCausalLM

    source = resume.checkpoint if resume.finished and resume.checkpoint else model_dir
    try:
        return AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise StageError(f"pretrain: cannot load the model at {model_dir}: {e}") from None


def prepare_model(ctx: StageContext[PretrainParams], model: Any) -> dict[str, int]:
    """No KV cache while training, and the layer freezing the recipe asks
    for; returns the trainable and total parameter counts."""
    from .freezing import freeze_layers

    p = ctx.params
    model.config.use_cache = False
    counts = freeze_layers(model, p.train_top_layers, p.freeze_embeddings)
    if p.train_top_layers is not None or p.freeze_embeddings:
        ctx.log.info(
            "layer freezing: %s of %s parameters trainable",
            f"{counts['trainable_parameters']:,}",
            f"{counts['total_parameters']:,}",
        )
        if p.gradient_checkpointing:
            model.enable_input_require_grads()
    return counts


def build_trainer(ctx: StageContext[PretrainParams], model: Any, train: Any, val: Any) -> Any:
    """transformers' Trainer over the packed rows, reporting progress and validation perplexity."""
    from transformers import Trainer, TrainingArguments

    from ..trainer_args import training_arguments_kwargs
    from ..trainer_progress import progress_callback, quiet_trainer
    from .collator import lm_collator
    from .metrics import perplexity_callback

    kwargs = training_arguments_kwargs(ctx.params, ctx, has_eval=val is not None)
    kwargs["remove_unused_columns"] = False
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**kwargs),
        train_dataset=train,
        eval_dataset=val,
        data_collator=lm_collator,
        callbacks=[progress_callback(ctx, "pretrain")],
    )
    quiet_trainer(trainer).add_callback(perplexity_callback(ctx))
    return trainer


def train_or_take_checkpoint(ctx: StageContext[PretrainParams], trainer: Any, resume: ResumePoint) -> TrainingOutcome:
    """Train (resuming from the checkpoint), or take a finished checkpoint as it is."""
    t0, c0 = time.perf_counter(), time.process_time()
    if resume.finished:
        from ..fsdp_model import prepare_to_evaluate_untrained

        ctx.log.info(
            "checkpoint %s already reached max_steps (%d): no further training", resume.checkpoint, ctx.params.max_steps
        )
        prepare_to_evaluate_untrained(trainer)  # under FSDP: for the final validation and the gathered save
        history = list(resume.state.get("log_history", []))
        logged = [h["loss"] for h in history if "loss" in h]
        train_loss, runtime, global_step = (float(logged[-1]) if logged else None), 0.0, resume.step
    else:
        if resume.checkpoint:
            ctx.log.info("pretrain resumes at step %d of %s", resume.step, ctx.params.max_steps)
        result = trainer.train(resume_from_checkpoint=resume.checkpoint)
        global_step, history = trainer.state.global_step, list(trainer.state.log_history)
        train_loss = float(result.training_loss)
        runtime = float(result.metrics.get("train_runtime", time.perf_counter() - t0))
    return TrainingOutcome(resume.step, global_step, history, train_loss, runtime, time.process_time() - c0)
