"""The Hugging Face-format quantization back ends of the quantize stage:

* ``int8``: CPU int8 through torchao (``TorchAoConfig``), the path that saves
  with ``save_pretrained`` and reloads with ``from_pretrained`` on a CPU under
  transformers 5 (optimum-quanto quantizes, but transformers refuses to
  serialize a quanto model; torch's ``quantize_dynamic`` cannot be saved as a
  model directory at all);
* ``bnb``: bitsandbytes 8-bit / 4-bit (nf4, fp4) through ``BitsAndBytesConfig``
  (CUDA only);
* ``gptq``: GPTQModel (the maintained successor of auto-gptq, which no longer
  imports with transformers 5), calibrated on the recipe's own data (CUDA only).

Each writes a self-contained directory (quantized weights + config with its
``quantization_config`` + tokenizer + generation config) and has a loader that
reads it back, so the stage measures the model that was actually saved.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from recipe_runner.stage import StageError

GPU_HINT = "On a CPU use method 'int8' (torchao) or 'gguf' (llama.cpp)."


def _require_cuda(method: str, device: str, install: str, what: str) -> None:
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        why = "no CUDA device is visible" if not torch.cuda.is_available() else "the stage's device is 'cpu'"
        raise StageError(
            f"method {method!r} needs a CUDA GPU ({why}) "
            f"and {what} (pip install 'recipe-runner[{install}]'). {GPU_HINT}"
        )


# ------------------------------------------------------------------ int8 (torchao)

def torchao_config(scheme: str):
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


def quantize_int8(model_dir: Path, out_dir: Path, tokenizer, scheme: str) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, quantization_config=torchao_config(scheme), device_map="cpu"
    )
    model.save_pretrained(str(out_dir))  # safetensors, with the torchao tensor subclasses' metadata
    tokenizer.save_pretrained(str(out_dir))
    return {"format": f"torchao-int8-{scheme.replace('_', '-')}", "library": "torchao"}


# ------------------------------------------------------------------ bitsandbytes

def _import_bnb():
    try:
        import bitsandbytes
    except Exception as e:
        raise StageError(
            f"method 'bnb' needs bitsandbytes: pip install 'recipe-runner[gpu]' (CUDA only) ({e}). {GPU_HINT}"
        ) from e
    return bitsandbytes


def quantize_bnb(model_dir: Path, out_dir: Path, tokenizer, bits: int, quant_type: str,
                 compute_dtype, device: str) -> dict[str, Any]:
    _require_cuda("bnb", device, "gpu", "bitsandbytes")
    _import_bnb()
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if bits == 8:
        qc = BitsAndBytesConfig(load_in_8bit=True)
        fmt = "bnb-int8"
    elif bits == 4:
        qc = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=True,
        )
        fmt = f"bnb-{quant_type}"
    else:
        raise StageError(f"bits {bits} is not supported by bitsandbytes (4 or 8)")
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), quantization_config=qc, dtype=compute_dtype, device_map={"": 0}
    )
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return {"format": fmt, "library": "bitsandbytes"}


# ------------------------------------------------------------------ GPTQ (GPTQModel)

def _import_gptqmodel():
    try:
        import gptqmodel
    except Exception as e:
        raise StageError(
            "method 'gptq' needs GPTQModel: pip install 'recipe-runner[gptq]' (it needs a CUDA GPU and may "
            f"replace a CPU build of torch with a CUDA one, so install it on a GPU machine) ({e}). {GPU_HINT}"
        ) from e
    return gptqmodel


def quantize_gptq(model_dir: Path, out_dir: Path, tokenizer, bits: int, group_size: int,
                  calibration: list[dict[str, list[int]]], batch_size: int, device: str,
                  desc_act: bool | None) -> dict[str, Any]:
    _require_cuda("gptq", device, "gptq", "GPTQModel")
    gptqmodel = _import_gptqmodel()
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


# ------------------------------------------------------------------ reload

def load_quantized(method: str, out_dir: Path, device: str):
    """The saved directory read back the way a user would; returns a causal LM
    whose ``forward`` gives logits and that has ``generate``."""
    from transformers import AutoModelForCausalLM

    if method == "int8":
        return AutoModelForCausalLM.from_pretrained(str(out_dir), device_map="cpu")
    if method == "bnb":
        return AutoModelForCausalLM.from_pretrained(str(out_dir), device_map={"": 0})
    if method == "gptq":
        gptqmodel = _import_gptqmodel()
        wrapped = gptqmodel.GPTQModel.load(str(out_dir), device="cuda")
        return wrapped.model  # the Hugging Face module inside, with quantized linears
    raise ValueError(method)
