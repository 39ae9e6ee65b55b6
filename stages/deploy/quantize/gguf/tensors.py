"""The tensors of a GGUF file: the model's safetensors read shard by shard,
renamed to llama.cpp's names, Q/K rows permuted into its rotary layout, each
written in the type llama.cpp would choose for the file type (and, for rope
type llama3, the frequency-factor tensor llama.cpp reads)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipe_runner import StageError

from .hparams import LlamaHParams

#: llama.cpp keeps these 4/5-bit file types' output projection at 8 bits
_LOW_BIT_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1")


@dataclass
class TensorCounts:
    """What was written: tensors per ggml type, tensors, parameters."""

    tensor_types: dict[str, int] = field(default_factory=dict)  # ggml type -> number of tensors
    n_tensors: int = 0
    n_params: int = 0

    def add(self, type_name: str, n_params: int) -> None:
        self.tensor_types[type_name] = self.tensor_types.get(type_name, 0) + 1
        self.n_tensors += 1
        self.n_params += n_params


def safetensors_files(model_dir: Path) -> list[str]:
    """The weight files of ``model_dir`` (those its index names, when it has one)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in model_dir.glob("*.safetensors"))
    if not files:
        raise StageError(f"{model_dir}: no *.safetensors weights (GGUF conversion reads safetensors only)")
    return files


def count_weights(model_dir: Path) -> int:
    """How many tensors the weight files hold (read from their headers)."""
    from safetensors import safe_open

    n = 0
    for fname in safetensors_files(model_dir):
        with safe_open(str(model_dir / fname), framework="pt") as f:
            n += len(f.keys())
    return n


def iter_safetensors(model_dir: Path) -> Iterator[tuple[str, Any]]:
    """(name, torch tensor) for every weight, shard by shard (bounded memory)."""
    from safetensors import safe_open

    for fname in safetensors_files(model_dir):
        with safe_open(str(model_dir / fname), framework="pt") as f:
            for name in list(f.keys()):  # a safetensors handle is not iterable
                yield name, f.get_tensor(name)


def permute_qk(w: Any, n_head: int, n_head_kv: int | None) -> Any:
    """llama.cpp's ``LlamaModel.permute``: HF's rotate-half row order -> GGML's
    interleaved rotary pairs, per head."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def choose_type(gguf_name: str, ndim: int, row: int, target: Any, block_sizes: Any) -> Any:
    """llama.cpp's per-tensor choice for a file type."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if ndim <= 1 or gguf_name.endswith("_norm.weight") or gguf_name == "rope_freqs.weight":
        return Q.F32
    t = target
    if t.name in _LOW_BIT_TYPES and gguf_name == "output.weight":
        t = Q.Q8_0  # the output projection is the most sensitive tensor
    block = block_sizes[t][0]
    if row % block != 0:
        return Q.F16
    return t


def add_tensors(
    writer: Any,
    model_dir: Path,
    hp: LlamaHParams,
    target: Any,
    counts: TensorCounts,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Every weight of ``model_dir`` into ``writer`` (the rope frequency
    factors first for rope type llama3); ``progress(1)`` after each."""
    import gguf

    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hp.n_layers)
    if hp.rope_type == "llama3":  # llama.cpp reads the llama3 frequency factors from a tensor
        add_llama3_rope_freqs(writer, hp, counts)
    seen_output = False
    for hf_name, t in iter_safetensors(model_dir):
        if hf_name.endswith(".rotary_emb.inv_freq") or (hp.tied_embeddings and hf_name == "lm_head.weight"):
            continue
        gname = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise StageError(f"{model_dir}: tensor {hf_name!r} has no llama.cpp name; is this a plain Llama model?")
        data = _llama_cpp_layout(hf_name, t, hp)
        qtype = choose_type(gname, data.ndim, data.shape[-1], target, gguf.GGML_QUANT_SIZES)
        _add_tensor(writer, gname, data, qtype)
        seen_output |= gname == "output.weight"
        counts.add(qtype.name, int(data.size))
        if progress is not None:
            progress(1)
    if not hp.tied_embeddings and not seen_output:
        raise StageError(f"{model_dir}: no lm_head.weight and tie_word_embeddings is false")


def _llama_cpp_layout(hf_name: str, tensor: Any, hp: LlamaHParams) -> Any:
    """The tensor as float32 numpy, q_proj / k_proj rows permuted."""
    import torch

    data = tensor.to(torch.float32).numpy()
    if hf_name.endswith("q_proj.weight"):
        return permute_qk(data, hp.n_head, hp.n_head)
    if hf_name.endswith("k_proj.weight"):
        return permute_qk(data, hp.n_head, hp.n_head_kv)
    return data


def _add_tensor(writer: Any, gname: str, data: Any, qtype: Any) -> None:
    import gguf
    import numpy as np

    if qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(gname, np.ascontiguousarray(data, dtype=np.float32))
    elif qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(gname, np.ascontiguousarray(data, dtype=np.float16))
    else:
        writer.add_tensor(gname, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def add_llama3_rope_freqs(writer: Any, hp: LlamaHParams, counts: TensorCounts) -> None:
    """As convert_hf_to_gguf's LlamaModel.generate_extra_tensors for rope_type llama3."""
    import numpy as np

    rope, base, dim = hp.rope, hp.rope_theta, hp.head_dim
    factor = float(rope.get("factor", 8.0))
    low = float(rope.get("low_freq_factor", 1.0))
    high = float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    low_wl, high_wl = old_ctx / low, old_ctx / high
    factors = []
    for i in range(0, dim, 2):
        freq = 1.0 / (base ** (i / dim))
        wavelen = 2 * math.pi / freq
        if wavelen < high_wl:
            factors.append(1.0)
        elif wavelen > low_wl:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    writer.add_tensor("rope_freqs.weight", np.asarray(factors, dtype=np.float32))
    counts.tensor_types["F32"] = counts.tensor_types.get("F32", 0) + 1
    counts.n_tensors += 1
