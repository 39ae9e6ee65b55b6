"""GPTQ through GPTQModel (the maintained successor of auto-gptq, which no
longer imports with transformers 5), calibrated on the recipe's own data
(CUDA only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recipe_runner import Artifact, StageError

from .gpu import import_gptqmodel, require_cuda
from .quality import token_stream

#: calibration sequences shorter than this are dropped
MIN_CALIBRATION_TOKENS = 10


def calibration_examples(art: Artifact, tokenizer: Any, n_samples: int, seq_len: int) -> list[dict[str, list[int]]]:
    """GPTQ calibration: ``n_samples`` sequences of up to ``seq_len`` tokens from
    the train split (held-out perplexity uses validation where there is one)."""
    ids, _ = token_stream(art, tokenizer, "train", n_samples * seq_len)
    out = [ids[i : i + seq_len] for i in range(0, len(ids), seq_len)]
    out = [w for w in out if len(w) >= MIN_CALIBRATION_TOKENS][:n_samples]
    if not out:
        raise StageError(f"dataset input {art.path}: not enough text for GPTQ calibration")
    return [{"input_ids": w, "attention_mask": [1] * len(w)} for w in out]


def quantize_gptq(
    model_dir: Path,
    out_dir: Path,
    tokenizer: Any,
    bits: int,
    group_size: int,
    calibration: list[dict[str, list[int]]],
    batch_size: int,
    device: str,
    desc_act: bool | None,
) -> dict[str, Any]:
    require_cuda("gptq", device, "gptq", "GPTQModel")
    gptqmodel = import_gptqmodel()
    if bits not in (2, 3, 4, 8):
        raise StageError(f"bits {bits} is not supported by GPTQ here (2, 3, 4 or 8)")
    kwargs: dict[str, Any] = {"bits": bits, "group_size": group_size}
    if desc_act is not None:
        kwargs["desc_act"] = desc_act
    qcfg = gptqmodel.GPTQConfig(**kwargs)
    model = gptqmodel.GPTQModel.load(str(model_dir), qcfg, device="cuda")
    model.quantize(calibration, batch_size=batch_size, tokenizer=tokenizer)
    model.save(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return {"format": "gptq", "library": f"gptqmodel {getattr(gptqmodel, '__version__', '')}".strip()}


def load_gptq(out_dir: Path) -> Any:
    """The saved directory read back with GPTQModel: the Hugging Face module
    inside, with quantized linears."""
    wrapped = import_gptqmodel().GPTQModel.load(str(out_dir), device="cuda")
    return wrapped.model
