"""A transformer's shape at plan time, without torch: the sizes a resource
estimate needs (layers, hidden and MLP width, heads, vocabulary) read off a
Hugging Face ``config.json`` (or the config fields of a random init), and the
parameter count that follows from them.

The shape travels between stages as the ``model_shape`` fact (a plain dict
with Hugging Face's key names), so the training stages can estimate memory
and time before anything is loaded."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: shape keys (Hugging Face names) and the other spellings of each among common architectures
_ALIASES: dict[str, tuple[str, ...]] = {
    "num_hidden_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim"),
    "num_attention_heads": ("num_attention_heads", "n_head"),
    "num_key_value_heads": ("num_key_value_heads",),
    "head_dim": ("head_dim",),
    "vocab_size": ("vocab_size",),
}

#: the defaults of a Llama config (transformers' LlamaConfig), for a random init that leaves some unset
LLAMA_DEFAULTS: dict[str, Any] = {
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_attention_heads": 32,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
}

#: architectures whose MLP is a plain up / activation / down (not gated like Llama's SwiGLU)
_PLAIN_MLP = ("gpt2", "gpt_neo", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "starcoder2")


def shape_from_config(config: Mapping[str, Any], model_type: str | None = None) -> dict[str, Any] | None:
    """The shape of a model config (a ``config.json`` dict, or a random
    init's ``config`` over its architecture's defaults), or None when a size
    is missing.  ``vocab_size`` may be None (a random init sized by its
    tokenizer)."""
    mtype = str(config.get("model_type") or model_type or "")
    values = {**(LLAMA_DEFAULTS if mtype == "llama" and "model_type" not in config else {}), **config}
    shape: dict[str, Any] = {"model_type": mtype}
    for key, names in _ALIASES.items():
        shape[key] = next((values[n] for n in names if isinstance(values.get(n), int)), None)
    hidden, heads, layers = shape["hidden_size"], shape["num_attention_heads"], shape["num_hidden_layers"]
    if not (isinstance(hidden, int) and isinstance(heads, int) and isinstance(layers, int)):
        return None
    gated = not mtype.startswith(_PLAIN_MLP)
    if shape["intermediate_size"] is None:
        if gated:
            return None
        shape["intermediate_size"] = 4 * hidden
    shape["num_key_value_heads"] = shape["num_key_value_heads"] or heads
    shape["head_dim"] = shape["head_dim"] or hidden // heads
    shape["tie_word_embeddings"] = bool(values.get("tie_word_embeddings", not gated))
    shape["gated_mlp"] = gated
    return shape


def local_model_shape(ref: str | None) -> dict[str, Any] | None:
    """The shape of a local model directory's ``config.json``; None for a hub
    id, a missing or unreadable file."""
    if not ref:
        return None
    config = Path(ref).expanduser() / "config.json"
    try:
        data = json.loads(config.read_text()) if config.is_file() else None
    except (OSError, ValueError):
        return None
    return shape_from_config(data) if isinstance(data, dict) else None


def sliced(shape: Mapping[str, Any], layer_slices: list[tuple[int, int]]) -> dict[str, Any]:
    """The shape after layer slicing (depth up- or down-scaling)."""
    return {**shape, "num_hidden_layers": sum(end - start for start, end in layer_slices)}


def layer_parameters(shape: Mapping[str, Any]) -> int:
    """Weights of one decoder layer: attention projections, MLP, two norms."""
    h, i = shape["hidden_size"], shape["intermediate_size"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    mlp = (3 if shape.get("gated_mlp", True) else 2) * h * i
    return h * q + 2 * h * kv + q * h + mlp + 2 * h


def count_parameters(shape: Mapping[str, Any], vocab: int) -> int:
    """Parameters of a causal LM of this shape (embeddings, layers, final
    norm, and the LM head unless tied); biases are left out."""
    h = shape["hidden_size"]
    head = 0 if shape.get("tie_word_embeddings") else vocab * h
    return vocab * h + shape["num_hidden_layers"] * layer_parameters(shape) + h + head
