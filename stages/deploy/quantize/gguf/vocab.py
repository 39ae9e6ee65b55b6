"""The tokenizer in a GGUF file (``tokenizer.ggml.*``): byte-level BPE as
llama.cpp's ``gpt2`` model (tokens in the byte alphabet, token types, the
pre-tokenizer's name, merges), sentencepiece and byte-fallback BPE as its
``llama`` model (pieces, scores, token types), and the special tokens with
the add-BOS/EOS flags the Hugging Face tokenizer really follows."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from recipe_runner import StageError

# llama.cpp's names for the pre-tokenizer regexes it knows (tokenizer.ggml.pre)
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

#: llama.cpp names tried first when several share a split regex
_PREFERRED_PRE = ["llama-bpe", "qwen2", "tekken", "gpt-4o"]

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")

#: the score of an unused (padding) piece
_UNUSED_SCORE = -1e9

Vocab = tuple[list[bytes], list[float], list[int]]  # pieces, scores, token types


def add_tokenizer(writer: Any, model_dir: Path, vocab_size: int) -> tuple[str, str | None]:
    """Write tokenizer.ggml.* keys; returns (tokenizer model, pre-tokenizer)."""
    tok_json_file = model_dir / "tokenizer.json"
    tok_json = json.loads(tok_json_file.read_text()) if tok_json_file.is_file() else {}
    model = tok_json.get("model", {})
    tokenizer = _load_tokenizer(model_dir)
    byte_level = (
        model.get("type") == "BPE"
        and not model.get("byte_fallback", False)
        and "ByteLevel" in json.dumps(tok_json.get("decoder") or {})
    )
    if byte_level:
        kind, pre = "gpt2", _add_byte_level(writer, model_dir, tokenizer, tok_json, vocab_size)
    elif (model_dir / "tokenizer.model").is_file() or (model.get("type") == "BPE" and model.get("byte_fallback")):
        kind, pre = "llama", None
        _add_sentencepiece(writer, model_dir, tokenizer, tok_json, vocab_size)
    else:
        raise StageError(
            f"{model_dir}: tokenizer type {model.get('type')!r} is not supported for GGUF "
            "(supported: byte-level BPE, sentencepiece / byte-fallback BPE)"
        )
    _add_special_tokens(writer, model_dir, tokenizer, vocab_size)
    return kind, pre


def _load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:
        raise StageError(
            f"{model_dir}: cannot load its tokenizer ({e}); the model directory must carry its tokenizer"
        ) from e


def _add_byte_level(writer: Any, model_dir: Path, tokenizer: Any, tok_json: dict[str, Any], vocab_size: int) -> str:
    tokens, types = byte_level_vocab(model_dir, tokenizer, vocab_size)
    pre = pre_tokenizer_name(tok_json)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    return pre


def _add_sentencepiece(writer: Any, model_dir: Path, tokenizer: Any, tok_json: dict[str, Any], vocab_size: int) -> None:
    tokens, scores, types = sentencepiece_vocab(model_dir, tokenizer, tok_json, vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)


def _add_special_tokens(writer: Any, model_dir: Path, tokenizer: Any, vocab_size: int) -> None:
    """Merges, special-token ids and the chat template (gguf's SpecialVocab),
    with the add-BOS/EOS flags measured on the tokenizer itself: what the
    tokenizer really does beats what its config may say, and llama.cpp adds
    BOS/EOS according to these flags."""
    import gguf

    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
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


def pre_tokenizer_name(tok_json: dict[str, Any]) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a byte-level BPE tokenizer.json."""
    pre = tok_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    types = [p.get("type") for p in parts]
    if types == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    splits = [p for p in parts if p.get("type") == "Split"]
    if len(splits) == 1 and types[-1] == "ByteLevel" and not parts[-1].get("use_regex", True):
        name = _split_regex_name((splits[0].get("pattern") or {}).get("Regex"))
        if name is not None:
            return name
    raise StageError(
        f"the tokenizer's pre-tokenizer ({types}) is not one llama.cpp knows by name (gpt-2, llama-bpe, qwen2, ...); "
        "a GGUF written with a guessed one would tokenize differently"
    )


def _split_regex_name(regex: str | None) -> str | None:
    """llama.cpp's name of a Split pre-tokenizer's regex, or None."""
    if regex == _GPT2_REGEX or regex == _GPT2_REGEX[: -len("|\\s+")]:
        return "gpt-2"
    try:  # transformers >= 5 knows llama.cpp's names for the common split regexes
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except Exception:  # pragma: no cover - older transformers
        GGUF_PRE_TOKENIZER_SPLITS = {}
    names = [n for n, r in GGUF_PRE_TOKENIZER_SPLITS.items() if r == regex]
    for n in _PREFERRED_PRE + names:
        if n in names:
            return n
    return None


def byte_level_vocab(model_dir: Path, tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
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
        else:
            tokens.append(reverse[i])
            types.append(_token_type(i, added))
    return tokens, types


def _token_type(token_id: int, added: dict[int, Any]) -> int:
    """CONTROL for a special added token, USER_DEFINED for another added one, else NORMAL."""
    import gguf

    if token_id in added:
        return int(gguf.TokenType.CONTROL if added[token_id].special else gguf.TokenType.USER_DEFINED)
    return int(gguf.TokenType.NORMAL)


def sentencepiece_vocab(model_dir: Path, tokenizer: Any, tok_json: dict[str, Any], vocab_size: int) -> Vocab:
    """(pieces, scores, token types) for llama.cpp's sentencepiece tokenizer.

    With a ``tokenizer.model`` the pieces and scores come from sentencepiece
    itself (gguf's ``SentencePieceVocab``, as llama.cpp's converter does).  A
    byte-fallback BPE known only from ``tokenizer.json`` has no scores; llama.cpp
    merges the pair whose result scores highest, so each token gets
    ``-(rank of the merge that makes it)``, which reproduces the BPE merge order.
    The list is padded with unused pieces to ``vocab_size``.
    """
    import gguf

    if (model_dir / "tokenizer.model").is_file():
        tokens, scores, types = _sentencepiece_model_vocab(model_dir)
    else:
        tokens, scores, types = _merge_rank_vocab(tokenizer, tok_json)
    if len(tokens) > vocab_size:
        raise StageError(
            f"{model_dir}: the tokenizer has {len(tokens)} tokens, more than the model's vocab_size {vocab_size}"
        )
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(_UNUSED_SCORE)
        types.append(int(gguf.TokenType.UNUSED))
    return tokens, scores, types


def _sentencepiece_model_vocab(model_dir: Path) -> Vocab:
    from gguf.vocab import SentencePieceVocab

    tokens: list[bytes] = []
    scores: list[float] = []
    types: list[int] = []
    for text, score, ttype in SentencePieceVocab(model_dir).all_tokens():
        tokens.append(text)
        scores.append(float(score))
        types.append(int(ttype))
    return tokens, scores, types


def _merge_rank_vocab(tokenizer: Any, tok_json: dict[str, Any]) -> Vocab:
    """A byte-fallback BPE's pieces in id order, scored by minus the rank of
    the merge that makes each (byte tokens BYTE, added tokens CONTROL or
    USER_DEFINED, holes UNUSED)."""
    import gguf

    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    rank: dict[str, int] = {}
    for r, m in enumerate(tok_json.get("model", {}).get("merges") or []):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(a + b, r)
    added = tokenizer.added_tokens_decoder
    tokens: list[bytes] = []
    scores: list[float] = []
    types: list[int] = []
    for i in range(max(reverse) + 1):
        t = reverse.get(i, f"[PAD{i}]")
        tokens.append(t.encode("utf-8"))
        if i not in reverse:
            types.append(int(gguf.TokenType.UNUSED))
            scores.append(_UNUSED_SCORE)
        elif _BYTE_TOKEN.fullmatch(t):
            types.append(int(gguf.TokenType.BYTE))
            scores.append(0.0)
        elif i in added:
            types.append(_token_type(i, added))
            scores.append(0.0)
        else:
            types.append(int(gguf.TokenType.NORMAL))
            scores.append(-float(rank[t]) if t in rank else 0.0)
    return tokens, scores, types
