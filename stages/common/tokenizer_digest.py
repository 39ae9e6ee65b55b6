"""The digest of a tokenizer's behaviour, shared by the stages that make token
ids (tokenize, pack pass it on) and the ones that pair a model with a
tokenizer (init, pretrain), so that pretrain can refuse data tokenized with
another tokenizer than the model's.

The digest covers what maps text to ids and back: the vocabulary and merges
(the Rust backend's model, merges kept in order), the normalizer, the
pre-tokenizer, the decoder, the added tokens and the BOS / EOS / UNK ids.  It
leaves out what does not change the ids the data stages write: the
post-processor (the tokenize stage adds BOS / EOS by id itself), padding and
truncation settings, the pad token (a loader may set it to the EOS token),
the JSON layout, file names and bytes.  The same tokenizer saved twice, or
saved by ``save_pretrained`` after a reload, has the same digest."""

from __future__ import annotations

import hashlib
import json
from typing import Any

#: the artifact meta key of the digest (tokenized / packed dataset, tokenizer, model)
TOKENIZER_DIGEST = "tokenizer_digest"
#: changes when what the digest covers does, so an old digest never equals a new one by accident
_SCHEME = "tokenizer-digest/1"
_BACKEND_PARTS = ("model", "normalizer", "pre_tokenizer", "decoder")
_SPECIAL_IDS = ("bos_token_id", "eos_token_id", "unk_token_id")


def tokenizer_digest(tokenizer: Any) -> str | None:
    """A short hex digest of what ``tokenizer`` does (a transformers tokenizer
    or a ``tokenizers.Tokenizer``); None when ``tokenizer`` is None."""
    if tokenizer is None:
        return None
    identity = {"scheme": _SCHEME, **_behaviour(tokenizer)}
    for key in _SPECIAL_IDS:
        value = getattr(tokenizer, key, None)
        if isinstance(value, int):
            identity[key] = value
    blob = json.dumps(identity, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def short(digest: str | None) -> str:
    """The first 12 hex digits, for messages."""
    return digest[:12] if digest else "unknown"


def _behaviour(tokenizer: Any) -> dict[str, Any]:
    """The Rust backend's behavioural parts (fast tokenizers), else the
    vocabulary, added tokens and SentencePiece model of a Python tokenizer."""
    backend = tokenizer if hasattr(tokenizer, "to_str") else getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        parts = {k: spec.get(k) for k in _BACKEND_PARTS}
        if isinstance(parts["model"], dict) and "merges" in parts["model"]:
            parts["model"] = {**parts["model"], "merges": [_merge_pair(m) for m in parts["model"]["merges"]]}
        parts["added_tokens"] = sorted(spec.get("added_tokens") or [], key=lambda t: t.get("id", -1))
        return parts
    return _slow_behaviour(tokenizer)


def _merge_pair(merge: Any) -> list[str]:
    """A BPE merge as a pair, whether written as ``"a b"`` (older files) or ``["a", "b"]``."""
    return merge.split(" ", 1) if isinstance(merge, str) else list(merge)


def _slow_behaviour(tokenizer: Any) -> dict[str, Any]:
    """A tokenizer without a Rust backend (e.g. SentencePiece-only): its class,
    vocabulary, added tokens and, when it has one, its serialized SentencePiece
    model (which holds its normalizer)."""
    parts: dict[str, Any] = {
        "class": type(tokenizer).__name__,
        "vocab": sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0])),
    }
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    parts["added_tokens"] = sorted((int(i), str(t)) for i, t in added.items())
    sp_model = getattr(tokenizer, "sp_model", None)
    if sp_model is not None and hasattr(sp_model, "serialized_model_proto"):
        parts["sentencepiece"] = hashlib.sha256(sp_model.serialized_model_proto()).hexdigest()
    return parts
