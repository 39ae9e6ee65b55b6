"""The quantize stage's Hugging Face-format methods (``int8``, ``bnb``,
``gptq``): a self-contained quantized model directory (weights with their
``quantization_config``, tokenizer, generation config), then read back the
way a user would, so the stage measures the model that was actually saved."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from recipe_runner import QUANTIZED_MODEL, Artifact, StageContext

from ...common.devices import torch_dtype
from ...common.models import match_umask
from .bnb import load_bnb, quantize_bnb
from .gptq import calibration_examples, load_gptq, quantize_gptq
from .int8 import load_int8, quantize_int8
from .params import QuantizeParams
from .quality import weights_size

#: files of the source model directory copied next to the quantized weights
_COPIED_FILES = ("generation_config.json",)


def quantize_hf(
    ctx: StageContext[QuantizeParams], model_dir: Path, tokenizer: Any, device: str, precision: str
) -> tuple[Artifact, Any, int]:
    """(the ``model`` artifact, the directory read back, its weights' size in bytes)."""
    p = ctx.params
    out_dir = ctx.output_path("model")
    for child in out_dir.iterdir():  # a re-run after a crash starts the directory again
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    with ctx.progress(f"quantize ({p.method})", total=None):
        info = _quantize(ctx, model_dir, out_dir, tokenizer, device, precision)
    for f in _COPIED_FILES:
        if (model_dir / f).is_file() and not (out_dir / f).exists():
            shutil.copy2(model_dir / f, out_dir / f)
    match_umask(out_dir)  # the libraries' save_pretrained writes safetensors 0600
    reloaded = load_quantized(p.method, out_dir)
    ctx.metrics.update(format=info["format"], library=info["library"])
    art = Artifact(QUANTIZED_MODEL, out_dir, meta={**info, "method": p.method})
    return art, reloaded, weights_size(out_dir)


def _quantize(
    ctx: StageContext[QuantizeParams], model_dir: Path, out_dir: Path, tokenizer: Any, device: str, precision: str
) -> dict[str, Any]:
    """Write the quantized directory with the stage's method; its artifact metadata."""
    p = ctx.params
    if p.method == "int8":
        return {**quantize_int8(model_dir, out_dir, tokenizer, p.int8_scheme), "scheme": p.int8_scheme}
    if p.method == "bnb":
        info = quantize_bnb(
            model_dir, out_dir, tokenizer, p.bits, p.bnb_4bit_quant_type, torch_dtype(precision), device
        )
        return {**info, "bits": p.bits}
    calib = calibration_examples(ctx.input("dataset"), tokenizer, p.calibration_samples, p.calibration_seq_len)
    ctx.metrics["calibration_samples"] = len(calib)
    info = quantize_gptq(
        model_dir, out_dir, tokenizer, p.bits, p.group_size, calib, p.calibration_batch_size, device, p.desc_act
    )
    return {**info, "bits": p.bits, "group_size": p.group_size}


def load_quantized(method: str, out_dir: Path) -> Any:
    """The saved directory read back the way a user would; a causal LM whose
    ``forward`` gives logits and that has ``generate``."""
    if method == "int8":
        return load_int8(out_dir)
    if method == "bnb":
        return load_bnb(out_dir)
    if method == "gptq":
        return load_gptq(out_dir)
    raise ValueError(method)
