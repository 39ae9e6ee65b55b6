"""What pretrain writes: a self-contained model directory (weights in the
input model's dtype or the recipe's save_dtype, tokenizer carried), the
trainer's log history and the loss curve.  Under DeepSpeed / FSDP the
trainer gathers the shards; rank 0 writes the rest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recipe_runner import StageContext

from .params import PretrainParams


def is_distributed(ctx: StageContext[PretrainParams], trainer: Any) -> bool:
    """Whether the weights are saved through the trainer (gathered from the
    ranks): more than one process, or a DeepSpeed / FSDP engine, from the raw
    parameters or the launch block, even in one process."""
    from ..fsdp_model import fsdp_enabled

    p = ctx.params
    engine = fsdp_enabled(trainer) or bool(getattr(trainer, "is_deepspeed_enabled", False))
    return bool(trainer.args.world_size > 1 or p.deepspeed is not None or p.fsdp or engine)


def save_trained_model(
    ctx: StageContext[PretrainParams],
    trainer: Any,
    model: Any,
    tokenizer: Any,
    input_dtype: str,
    history: list[dict[str, Any]],
) -> Path:
    """The model directory of the output ``model`` (see the module docstring)."""
    from ...common.models import match_umask
    from ..fsdp_model import facts_after_headline_metrics
    from ..trainer_progress import save_loss_curve

    out = ctx.output_path("model")
    distributed = is_distributed(ctx, trainer)
    if distributed:
        trainer.save_model(str(out))
    facts_after_headline_metrics(ctx)
    if not trainer.is_world_process_zero():
        return out
    model.config.use_cache = True
    if not distributed:
        _save_weights(
            trainer.model, tokenizer, out, input_dtype if ctx.params.save_dtype == "auto" else ctx.params.save_dtype
        )
    elif tokenizer is not None:
        tokenizer.save_pretrained(str(out))
        model.config.save_pretrained(str(out))
    (out / "training_args.bin").unlink(missing_ok=True)
    (out / "trainer_history.json").write_text(json.dumps(history, indent=1))
    save_loss_curve(history, out / "loss_curve.png", title=f"{ctx.name}: loss")
    match_umask(out)  # trainer.save_model writes safetensors 0600 (through a private temporary file)
    return out


def _save_weights(model: Any, tokenizer: Any, out: Path, dtype: str) -> None:
    """Config, safetensors weights (cast to bf16 / fp16 when asked) and tokenizer."""
    import torch

    from ...common.models import save_model_dir

    if dtype in ("bfloat16", "float16"):
        model = model.to(getattr(torch, dtype))
    save_model_dir(model, tokenizer, out)
