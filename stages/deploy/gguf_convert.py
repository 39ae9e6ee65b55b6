"""Hugging Face Llama-family model directory -> one GGUF file (llama.cpp's format).

Written with the ``gguf`` package (llama.cpp's own Python library): ``GGUFWriter``
for the container, ``TensorNameMap`` for llama.cpp's tensor names,
``gguf.quants.quantize`` for Q8_0/Q4_0/... blocks and ``SpecialVocab`` for
merges, special-token ids and the chat template.  The conversion follows
llama.cpp's ``convert_hf_to_gguf.py`` for ``LlamaForCausalLM``:

* q_proj / k_proj rows are permuted into llama.cpp's rotary layout (llama.cpp
  and transformers' GGUF loader un-permute them);
* 1-D tensors (norms) stay F32; a 2-D tensor whose rows are not a multiple of
  the block size (32) falls back to F16, as the converter does;
* with a 4-bit type the output projection is kept at Q8_0 (llama.cpp's
  ``llama-quantize`` keeps it at Q6_K, which gguf-py cannot write);
* byte-level BPE vocabularies are written as ``tokenizer.ggml.model = gpt2``
  (tokens in the byte alphabet, token types, merges); sentencepiece ones as
  ``llama`` (pieces, scores, token types).

Everything heavy is imported inside the functions.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from recipe_runner.stage import StageError

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

# llama.cpp's names for the pre-tokenizer regexes it knows (tokenizer.ggml.pre)
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


@dataclass
class GGUFResult:
    path: Path
    file_type: str
    tensor_types: dict[str, int] = field(default_factory=dict)  # ggml type -> number of tensors
    n_tensors: int = 0
    n_params: int = 0
    tokenizer_model: str = ""
    tokenizer_pre: str | None = None


def _read_config(model_dir: Path) -> dict[str, Any]:
    cfg_file = model_dir / "config.json"
    if not cfg_file.is_file():
        raise StageError(f"{model_dir}: no config.json; the model input must be a Hugging Face model directory")
    cfg = json.loads(cfg_file.read_text())
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


def _iter_safetensors(model_dir: Path):
    """(name, torch tensor) for every weight, shard by shard (bounded memory)."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in model_dir.glob("*.safetensors"))
    if not files:
        raise StageError(f"{model_dir}: no *.safetensors weights (GGUF conversion reads safetensors only)")
    for fname in files:
        with safe_open(str(model_dir / fname), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def permute_qk(w, n_head: int, n_head_kv: int | None):
    """llama.cpp's ``LlamaModel.permute``: HF's rotate-half row order -> GGML's
    interleaved rotary pairs, per head."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ---------------------------------------------------------------- tokenizer

def _pre_tokenizer_name(tok_json: dict[str, Any]) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a byte-level BPE tokenizer.json."""
    pre = tok_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    types = [p.get("type") for p in parts]
    if types == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    splits = [p for p in parts if p.get("type") == "Split"]
    if len(splits) == 1 and types[-1] == "ByteLevel" and not parts[-1].get("use_regex", True):
        regex = (splits[0].get("pattern") or {}).get("Regex")
        if regex == _GPT2_REGEX or regex == _GPT2_REGEX[: -len("|\\s+")]:
            return "gpt-2"
        try:  # transformers >= 5 knows llama.cpp's names for the common split regexes
            from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
        except Exception:  # pragma: no cover - older transformers
            GGUF_PRE_TOKENIZER_SPLITS = {}
        preferred = ["llama-bpe", "qwen2", "tekken", "gpt-4o"]
        names = [n for n, r in GGUF_PRE_TOKENIZER_SPLITS.items() if r == regex]
        for n in preferred + names:
            if n in names:
                return n
    raise StageError(
        f"the tokenizer's pre-tokenizer ({types}) is not one llama.cpp knows by name (gpt-2, llama-bpe, qwen2, ...); "
        "a GGUF written with a guessed one would tokenize differently"
    )


def _byte_level_vocab(model_dir: Path, tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Like convert_hf_to_gguf's ``get_vocab_base``: tokens in id order,
    special added tokens CONTROL, other added tokens USER_DEFINED, holes UNUSED."""
    import gguf

    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise StageError(
            f"{model_dir}: the tokenizer has ids up to {max(vocab.values())} but the model's vocab_size is {vocab_size}"
        )
    reverse = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
            continue
        tok = reverse[i]
        if i in added:
            types.append(int(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED))
        else:
            types.append(int(gguf.TokenType.NORMAL))
        tokens.append(tok)
    return tokens, types


def _sentencepiece_vocab(model_dir: Path, tokenizer, tok_json: dict[str, Any], vocab_size: int):
    """(pieces, scores, token types) for llama.cpp's sentencepiece tokenizer.

    With a ``tokenizer.model`` the pieces and scores come from sentencepiece
    itself (gguf's ``SentencePieceVocab``, as llama.cpp's converter does).  A
    byte-fallback BPE known only from ``tokenizer.json`` has no scores; llama.cpp
    merges the pair whose result scores highest, so each token gets
    ``-(rank of the merge that makes it)``, which reproduces the BPE merge order.
    """
    import gguf

    tokens: list[bytes] = []
    scores: list[float] = []
    types: list[int] = []
    if (model_dir / "tokenizer.model").is_file():
        from gguf.vocab import SentencePieceVocab

        for text, score, ttype in SentencePieceVocab(model_dir).all_tokens():
            tokens.append(text)
            scores.append(float(score))
            types.append(int(ttype))
    else:
        import re

        vocab = tokenizer.get_vocab()
        reverse = {i: t for t, i in vocab.items()}
        merges = tok_json.get("model", {}).get("merges") or []
        rank: dict[str, int] = {}
        for r, m in enumerate(merges):
            a, b = m.split(" ", 1) if isinstance(m, str) else m
            rank.setdefault(a + b, r)
        added = tokenizer.added_tokens_decoder
        for i in range(max(reverse) + 1):
            t = reverse.get(i, f"[PAD{i}]")
            tokens.append(t.encode("utf-8"))
            if i not in reverse:
                types.append(int(gguf.TokenType.UNUSED))
                scores.append(-1e9)
            elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t):
                types.append(int(gguf.TokenType.BYTE))
                scores.append(0.0)
            elif i in added:
                types.append(int(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED))
                scores.append(0.0)
            else:
                types.append(int(gguf.TokenType.NORMAL))
                scores.append(-float(rank[t]) if t in rank else 0.0)
    if len(tokens) > vocab_size:
        raise StageError(f"{model_dir}: the tokenizer has {len(tokens)} tokens, more than the model's vocab_size {vocab_size}")
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1e9)
        types.append(int(gguf.TokenType.UNUSED))
    return tokens, scores, types


def add_tokenizer(writer, model_dir: Path, vocab_size: int) -> tuple[str, str | None]:
    """Write tokenizer.ggml.* keys; returns (tokenizer model, pre-tokenizer)."""
    import gguf
    from transformers import AutoTokenizer

    tok_json_file = model_dir / "tokenizer.json"
    tok_json = json.loads(tok_json_file.read_text()) if tok_json_file.is_file() else {}
    model = tok_json.get("model", {})
    decoder_types = json.dumps(tok_json.get("decoder") or {})
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:
        raise StageError(f"{model_dir}: cannot load its tokenizer ({e}); the model directory must carry its tokenizer") from e

    byte_level = model.get("type") == "BPE" and not model.get("byte_fallback", False) and "ByteLevel" in decoder_types
    if byte_level:
        tokens, types = _byte_level_vocab(model_dir, tokenizer, vocab_size)
        pre = _pre_tokenizer_name(tok_json)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        kind = "gpt2"
    elif (model_dir / "tokenizer.model").is_file() or (model.get("type") == "BPE" and model.get("byte_fallback")):
        tokens, scores, types = _sentencepiece_vocab(model_dir, tokenizer, tok_json, vocab_size)
        pre = None
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        kind = "llama"
    else:
        raise StageError(
            f"{model_dir}: tokenizer type {model.get('type')!r} is not supported for GGUF "
            "(supported: byte-level BPE, sentencepiece / byte-fallback BPE)"
        )

    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    # What the tokenizer really does beats what its config may say: llama.cpp adds
    # BOS/EOS according to these flags, so they must match the HF tokenizer.
    probe = tokenizer("a")["input_ids"]
    if tokenizer.bos_token_id is not None:
        special.add_special_token["bos"] = bool(probe) and probe[0] == tokenizer.bos_token_id
    if tokenizer.eos_token_id is not None:
        special.add_special_token["eos"] = bool(probe) and probe[-1] == tokenizer.eos_token_id
    for typ in ("bos", "eos", "unk", "pad"):
        tid = getattr(tokenizer, f"{typ}_token_id", None)
        if tid is not None and typ not in special.special_token_ids and 0 <= tid < vocab_size:
            special.special_token_ids[typ] = tid
    special.add_to_gguf(writer, quiet=True)
    return kind, pre


# ---------------------------------------------------------------- tensors

def _choose_type(gguf_name: str, ndim: int, row: int, target, block_sizes) -> Any:
    """llama.cpp's per-tensor choice for a file type."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if ndim <= 1 or gguf_name.endswith("_norm.weight") or gguf_name == "rope_freqs.weight":
        return Q.F32
    t = target
    if t in (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1) and gguf_name == "output.weight":
        t = Q.Q8_0  # the output projection is the most sensitive tensor
    block = block_sizes[t][0]
    if row % block != 0:
        return Q.F16
    return t


def write_gguf(
    model_dir: str | Path,
    out_file: str | Path,
    gguf_type: str = "q8_0",
    metadata: dict[str, Any] | None = None,  # str -> str/int/float/bool/list[str]
    name: str | None = None,
    description: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> GGUFResult:
    """Convert ``model_dir`` to ``out_file``.  ``metadata``: extra keys (str ->
    str/int/float/bool) written as they are, e.g. ``recipe_runner.recipe``."""
    import gguf
    import numpy as np
    import torch

    model_dir, out_file = Path(model_dir), Path(out_file)
    if gguf_type not in GGUF_TYPES:
        raise StageError(f"gguf_type {gguf_type!r} is not one of {sorted(GGUF_TYPES)}")
    qname, ftype_name = GGUF_TYPES[gguf_type]
    target = gguf.GGMLQuantizationType[qname]
    cfg = _read_config(model_dir)
    arch = gguf_arch_for(cfg)

    n_layers = int(cfg["num_hidden_layers"])
    hidden = int(cfg["hidden_size"])
    n_head = int(cfg["num_attention_heads"])
    n_head_kv = int(cfg.get("num_key_value_heads") or n_head)
    head_dim = cfg.get("head_dim") or hidden // n_head
    vocab_size = int(cfg["vocab_size"])
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default")) or "default"

    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(out_file.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), arch, use_temp_file=True)

    # --- general.* and hyper-parameters (TextModel/LlamaModel.set_gguf_parameters)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or model_dir.name)
    if description:
        writer.add_description(description)
    writer.add_quantized_by("recipe-runner")
    writer.add_file_type(int(gguf.LlamaFileType[ftype_name]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(int(cfg["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    writer.add_rope_freq_base(rope_theta)
    writer.add_rope_dimension_count(int(head_dim))
    if cfg.get("head_dim") is not None:
        writer.add_key_length(int(head_dim))
        writer.add_value_length(int(head_dim))
    writer.add_vocab_size(vocab_size)
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type not in ("default", "llama3"):
        raise StageError(f"rope type {rope_type!r} is not supported by the GGUF writer (default, linear, llama3)")
    for key, value in (metadata or {}).items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_int64(key, value)
        elif isinstance(value, float):
            writer.add_float64(key, value)
        elif isinstance(value, (list, tuple)):
            if value:  # GGUF arrays carry their element type: an empty one cannot be written
                writer.add_array(key, [str(v) for v in value])
        else:
            writer.add_string(key, str(value))

    tok_model, tok_pre = add_tokenizer(writer, model_dir, vocab_size)

    # --- tensors
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    tied = bool(cfg.get("tie_word_embeddings", False))
    result = GGUFResult(path=out_file, file_type=gguf_type, tokenizer_model=tok_model, tokenizer_pre=tok_pre)
    if rope_type == "llama3":  # llama.cpp reads the llama3 frequency factors from a tensor
        _add_llama3_rope_freqs(writer, rope, rope_theta, int(head_dim), result)
    seen_output = False
    for hf_name, t in _iter_safetensors(model_dir):
        if hf_name.endswith(".rotary_emb.inv_freq"):
            continue
        if tied and hf_name == "lm_head.weight":
            continue
        gname = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise StageError(f"{model_dir}: tensor {hf_name!r} has no llama.cpp name; is this a plain Llama model?")
        data = t.to(torch.float32).numpy()
        if hf_name.endswith("q_proj.weight"):
            data = permute_qk(data, n_head, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = permute_qk(data, n_head, n_head_kv)
        qtype = _choose_type(gname, data.ndim, data.shape[-1], target, gguf.GGML_QUANT_SIZES)
        if qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gname, np.ascontiguousarray(data, dtype=np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(gname, np.ascontiguousarray(data, dtype=np.float16))
        else:
            writer.add_tensor(gname, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        seen_output |= gname == "output.weight"
        result.tensor_types[qtype.name] = result.tensor_types.get(qtype.name, 0) + 1
        result.n_tensors += 1
        result.n_params += int(data.size)
        if progress is not None:
            progress(1)
    if not tied and not seen_output:
        raise StageError(f"{model_dir}: no lm_head.weight and tie_word_embeddings is false")

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out_file)
    return result


def _add_llama3_rope_freqs(writer, rope: dict[str, Any], base: float, dim: int, result: GGUFResult) -> None:
    """As convert_hf_to_gguf's LlamaModel.generate_extra_tensors for rope_type llama3."""
    import math

    import numpy as np

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
    result.tensor_types["F32"] = result.tensor_types.get("F32", 0) + 1
    result.n_tensors += 1


def read_gguf_metadata(path: str | Path) -> dict[str, Any]:
    """The file's scalar/string metadata (arrays are left out), for reports and tests."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(path))
    out: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if not f.types or f.types[0] == GGUFValueType.ARRAY:
            continue
        out[key] = f.contents()
    return out
