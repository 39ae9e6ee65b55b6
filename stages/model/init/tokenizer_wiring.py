"""The tokenizer a started model carries: which one (the ``tokenizer``
parameter, else the base model's own, else the ``tokenizer`` input), and how
the model follows it (special-token ids in its config, embeddings resized)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from recipe_runner import Artifact, StageError

from ...common.models import load_tokenizer
from .params import InitParams
from .sources import resolve_source

#: the special-token ids a tokenizer hands to a model's config
SPECIAL_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def choose_tokenizer(p: InitParams, base_ref: str | None, tokenizer_input: Artifact | None) -> Any | None:
    """The ``tokenizer`` parameter, else the base model's own (a base keeps the
    vocabulary it was trained with), else the ``tokenizer`` input, else None."""
    if p.tokenizer:
        return load_init_tokenizer(resolve_source(p.tokenizer, "tokenizer"), p)
    if base_ref is not None and (not Path(base_ref).exists() or has_tokenizer_files(base_ref)):
        return load_init_tokenizer(base_ref, p)
    if tokenizer_input is not None:
        return load_init_tokenizer(str(tokenizer_input.path), p)
    return None


def load_init_tokenizer(ref: str, p: InitParams) -> Any:
    """The tokenizer at ``ref`` (``p.revision`` when it is ``from_pretrained``);
    a failure is a StageError naming it."""
    try:
        return load_tokenizer(
            ref,
            revision=p.revision if ref == p.from_pretrained else None,
            trust_remote_code=p.trust_remote_code,
        )
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise StageError(f"init: cannot load tokenizer {ref!r}: {msg}") from None


def has_tokenizer_files(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / f).exists() for f in _TOKENIZER_FILES)


def fit_embeddings(model: Any, p: InitParams, tokenizer: Any | None, log: logging.Logger) -> None:
    """Resize a base model's embeddings: to ``p.vocab_size`` when it is set,
    for 'auto' grown to the tokenizer's length when that is larger."""
    want = len(tokenizer) if (p.vocab_size == "auto" and tokenizer is not None) else p.vocab_size
    have = model.get_input_embeddings().weight.shape[0]
    if isinstance(want, int) and (want > have or (p.vocab_size != "auto" and want != have)):
        log.warning("resizing the embeddings from %d to %d tokens", have, want)
        model.resize_token_embeddings(want)


def copy_special_token_ids(model: Any, tokenizer: Any) -> None:
    """The tokenizer's bos/eos/pad ids (those it has) into the model's config
    and generation config."""
    for key in SPECIAL_TOKEN_IDS:
        value = getattr(tokenizer, key)
        if value is not None:
            setattr(model.config, key, value)
            if model.generation_config is not None:
                setattr(model.generation_config, key, value)
