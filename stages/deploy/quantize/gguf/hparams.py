"""What the GGUF header says about the model: the file type, the
architecture, and the Llama hyper-parameters from the model's config.json
(``TextModel/LlamaModel.set_gguf_parameters`` in llama.cpp's converter)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipe_runner import StageError

# name -> (ggml type name, LlamaFileType name)
GGUF_TYPES: dict[str, tuple[str, str]] = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
    "q5_1": ("Q5_1", "MOSTLY_Q5_1"),
    "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
    "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
    "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
}

SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama"}

#: rope types the writer knows: "linear" as a scaling key, "llama3" as a frequency-factor tensor
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def read_config(model_dir: Path) -> dict[str, Any]:
    cfg_file = model_dir / "config.json"
    if not cfg_file.is_file():
        raise StageError(f"{model_dir}: no config.json; the model input must be a Hugging Face model directory")
    cfg: dict[str, Any] = json.loads(cfg_file.read_text())
    # multimodal wrappers keep the language model's settings in text_config
    if "text_config" in cfg and "num_hidden_layers" not in cfg:
        cfg = {**cfg, **cfg["text_config"]}
    return cfg


def gguf_arch_for(cfg: dict[str, Any]) -> str:
    archs = cfg.get("architectures") or []
    for a in archs:
        if a in SUPPORTED_ARCHITECTURES:
            return SUPPORTED_ARCHITECTURES[a]
    if cfg.get("model_type") in ("llama", "mistral"):
        return "llama"
    raise StageError(
        f"GGUF export supports Llama-family models ({', '.join(sorted(SUPPORTED_ARCHITECTURES))}); "
        f"this model is {archs or cfg.get('model_type')!r}"
    )


@dataclass(frozen=True)
class LlamaHParams:
    """A Llama-family config as the GGUF writer needs it."""

    arch: str
    n_layers: int
    hidden: int
    n_head: int
    n_head_kv: int
    head_dim: int
    explicit_head_dim: bool  # the config names head_dim: written as key / value length too
    vocab_size: int
    context_length: int
    feed_forward_length: int
    rms_norm_eps: float
    rope: dict[str, Any]
    rope_theta: float
    rope_type: str
    tied_embeddings: bool

    @classmethod
    def of(cls, model_dir: Path) -> LlamaHParams:
        """The hyper-parameters of ``model_dir``; a non-Llama model or an
        unsupported rope type is a StageError."""
        cfg = read_config(model_dir)
        arch = gguf_arch_for(cfg)
        hidden = int(cfg["hidden_size"])
        n_head = int(cfg["num_attention_heads"])
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default")) or "default"
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise StageError(f"rope type {rope_type!r} is not supported by the GGUF writer (default, linear, llama3)")
        return cls(
            arch=arch,
            n_layers=int(cfg["num_hidden_layers"]),
            hidden=hidden,
            n_head=n_head,
            n_head_kv=int(cfg.get("num_key_value_heads") or n_head),
            head_dim=int(cfg.get("head_dim") or hidden // n_head),
            explicit_head_dim=cfg.get("head_dim") is not None,
            vocab_size=int(cfg["vocab_size"]),
            context_length=int(cfg.get("max_position_embeddings", 2048)),
            feed_forward_length=int(cfg["intermediate_size"]),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope=rope,
            rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
            rope_type=rope_type,
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )


def add_hparams(writer: Any, hp: LlamaHParams) -> None:
    """The ``llama.*`` keys: context, sizes, heads, norm epsilon, rope."""
    import gguf

    writer.add_context_length(hp.context_length)
    writer.add_embedding_length(hp.hidden)
    writer.add_block_count(hp.n_layers)
    writer.add_feed_forward_length(hp.feed_forward_length)
    writer.add_head_count(hp.n_head)
    writer.add_head_count_kv(hp.n_head_kv)
    writer.add_layer_norm_rms_eps(hp.rms_norm_eps)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_rope_dimension_count(hp.head_dim)
    if hp.explicit_head_dim:
        writer.add_key_length(hp.head_dim)
        writer.add_value_length(hp.head_dim)
    writer.add_vocab_size(hp.vocab_size)
    if hp.rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(hp.rope["factor"]))
