"""LoRA and QLoRA: the adapter parameters shared by sft, dpo and ppo (a
``peft.LoraConfig``), the 4-bit quantisation of a QLoRA base model (a
``BitsAndBytesConfig``, refused where bitsandbytes cannot run), and the
trainable share of a model's parameters."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field

from recipe_runner import Params, StageError

from ..common.devices import torch_dtype


class LoraParams(Params):
    """LoRA adapter settings (peft.LoraConfig)."""

    model_config = ConfigDict(allow_inf_nan=False)

    r: int = Field(16, ge=1, description="rank of the low-rank update matrices (the course uses 16)")
    alpha: int = Field(
        32, ge=1, description="LoRA scaling numerator: the update is scaled by alpha / r (the course uses 32)"
    )
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA branch input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="module names to adapt (e.g. [q_proj, v_proj]) or 'all-linear' for every linear layer except "
        "the output head",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="which biases to train")
    modules_to_save: list[str] | None = Field(
        None, description="extra modules trained in full and saved with the adapter (e.g. [lm_head, embed_tokens])"
    )

    def to_peft(self, task_type: str = "CAUSAL_LM") -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            bias=self.bias,
            modules_to_save=self.modules_to_save,
            task_type=task_type,
        )


class QLoraParams(Params):
    """4-bit quantisation of the frozen base model for QLoRA (bitsandbytes; CUDA only)."""

    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type (NormalFloat4 as in the QLoRA paper)")
    double_quant: bool = Field(True, description="also quantise the quantisation constants (saves ~0.4 bit/param)")
    compute_dtype: Literal["bf16", "fp16", "fp32"] = Field(
        "bf16", description="dtype the 4-bit weights are dequantised to for matmuls"
    )


def bnb_config(q: QLoraParams, device: str) -> Any:
    """BitsAndBytesConfig for QLoRA, refused with a clear message where it cannot run."""
    if device != "cuda":
        raise StageError(
            "QLoRA (method: qlora) loads the base model in 4 bits with bitsandbytes, which needs a CUDA "
            "GPU; none is visible here. Use method: lora (same adapter, unquantised base) on a CPU."
        )
    try:
        importlib.import_module("bitsandbytes")
    except ImportError as e:
        raise StageError("QLoRA needs bitsandbytes: pip install 'recipe-runner[gpu]' (or bitsandbytes)") from e
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(q.compute_dtype),
    )


def trainable_share(model: Any) -> dict[str, Any]:
    """Trainable and total parameters of a model (an adapter trains a small share)."""
    n_train = sum(x.numel() for x in model.parameters() if x.requires_grad)
    n_all = sum(x.numel() for x in model.parameters())
    return {
        "trainable_parameters": int(n_train),
        "total_parameters": int(n_all),
        "trainable_fraction": n_train / max(1, n_all),
    }


def merge_saved_adapter(base_path: str, adapter_dir: str | Path, dtype: Any) -> Any:
    """A standalone model: the base reloaded in ``dtype`` with the saved
    adapter folded into its weights (when the trained model cannot merge in
    place: 4-bit QLoRA weights, or a model FSDP holds sharded)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
