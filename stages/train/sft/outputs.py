"""What the sft stage writes: the fine-tuned model (full fine-tuning), or the
adapter and, when asked, a standalone model with the adapter merged in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recipe_runner import ADAPTER, Artifact, StageContext

from ...common.models import match_umask
from .params import SFTParams


def save_adapter(ctx: StageContext[SFTParams], model: Any, tok: Any, out: Path, base_path: str) -> Artifact:
    """The adapter directory (with the tokenizer) and its artifact."""
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    match_umask(out)  # PEFT's save_pretrained writes adapter_model.safetensors 0600
    return adapter_artifact(ctx, out, base_path)


def adapter_artifact(ctx: StageContext[SFTParams], out: Path, base_path: str) -> Artifact:
    """The artifact of the adapter saved in ``out``."""
    p = ctx.params
    meta = {
        "base_model": base_path,
        "method": p.method,
        "r": p.lora.r,
        "alpha": p.lora.alpha,
        "trainable_parameters": ctx.metrics.get("trainable_parameters"),
    }
    return Artifact(kind=ADAPTER, path=out, meta=meta)


def merge_adapter(base_path: str, adapter_dir: Path, p: SFTParams, trained: Any | None) -> Any:
    """A standalone model with the adapter folded into the base weights.  LoRA:
    merge in place; QLoRA, or no ``trained`` model at hand (FSDP holds it
    sharded): reload the base unquantised (QLoRA's compute dtype, else
    float32) and merge the saved adapter there (4-bit weights cannot absorb
    the update)."""
    import torch

    if p.method == "lora" and trained is not None:
        merged = trained.merge_and_unload()
        return merged.to(torch.float32) if merged.dtype != torch.float32 and str(merged.device) == "cpu" else merged
    from ...common.devices import torch_dtype
    from ..lora import merge_saved_adapter

    dtype = torch_dtype(p.qlora.compute_dtype) if p.method == "qlora" else torch.float32
    return merge_saved_adapter(base_path, adapter_dir, dtype)
