"""CPU int8 through torchao (``TorchAoConfig``): the path that saves with
``save_pretrained`` and reloads with ``from_pretrained`` on a CPU under
transformers 5 (optimum-quanto quantizes, but transformers refuses to
serialize a quanto model; torch's ``quantize_dynamic`` cannot be saved as a
model directory at all)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recipe_runner import StageError


def torchao_config(scheme: str) -> Any:
    from transformers import TorchAoConfig

    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig
    except Exception as e:  # pragma: no cover - torchao is a core dependency
        raise StageError(f"method 'int8' needs torchao (pip install torchao): {e}") from e
    if scheme == "weight_only":
        return TorchAoConfig(Int8WeightOnlyConfig())
    if scheme == "dynamic_activation":
        return TorchAoConfig(Int8DynamicActivationInt8WeightConfig())
    raise StageError(f"int8_scheme {scheme!r} is not 'weight_only' or 'dynamic_activation'")


def quantize_int8(model_dir: Path, out_dir: Path, tokenizer: Any, scheme: str) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, quantization_config=torchao_config(scheme), device_map="cpu"
    )
    model.save_pretrained(str(out_dir))  # safetensors, with the torchao tensor subclasses' metadata
    tokenizer.save_pretrained(str(out_dir))
    return {"format": f"torchao-int8-{scheme.replace('_', '-')}", "library": "torchao"}


def load_int8(out_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(out_dir), device_map="cpu")
