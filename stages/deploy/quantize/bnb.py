"""bitsandbytes 8-bit / 4-bit (nf4, fp4) through ``BitsAndBytesConfig`` (CUDA only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recipe_runner import StageError

from .gpu import import_bnb, require_cuda


def bnb_config(bits: int, quant_type: str, compute_dtype: Any) -> tuple[Any, str]:
    """(BitsAndBytesConfig, format name) for ``bits`` 8 or 4."""
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True), "bnb-int8"
    if bits == 4:
        qc = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_type,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=True,
        )
        return qc, f"bnb-{quant_type}"
    raise StageError(f"bits {bits} is not supported by bitsandbytes (4 or 8)")


def quantize_bnb(
    model_dir: Path, out_dir: Path, tokenizer: Any, bits: int, quant_type: str, compute_dtype: Any, device: str
) -> dict[str, Any]:
    require_cuda("bnb", device, "gpu", "bitsandbytes")
    import_bnb()
    from transformers import AutoModelForCausalLM

    qc, fmt = bnb_config(bits, quant_type, compute_dtype)
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), quantization_config=qc, dtype=compute_dtype, device_map={"": 0}
    )
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return {"format": fmt, "library": "bitsandbytes"}


def load_bnb(out_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(out_dir), device_map={"": 0})
