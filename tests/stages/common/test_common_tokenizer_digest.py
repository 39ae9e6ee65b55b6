"""tokenizer_digest: the same behaviour gives the same digest however the
tokenizer was saved or reloaded; a change to the vocabulary, the merges, the
normalizer, the pre-tokenizer, the added tokens or the special-token ids
gives another one (each change checked to change the ids too)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from recipe_runner_stages.common.models import load_tokenizer
from recipe_runner_stages.common.tokenizer_digest import tokenizer_digest

TEXT = "Hello World, the Verdict of Jack Gisburn: I had always thought him a cheap genius.  Ünï 🙂"


def _variant(src: Path, dst: Path, edit: Callable[[dict[str, Any]], None]) -> Any:
    """A copy of the tokenizer directory ``src`` with its tokenizer.json edited, loaded."""
    shutil.copytree(src, dst)
    spec = json.loads((dst / "tokenizer.json").read_text())
    edit(spec)
    (dst / "tokenizer.json").write_text(json.dumps(spec))
    return load_tokenizer(dst)


def _ids(tok: Any) -> list[int]:
    return list(tok(TEXT, add_special_tokens=False)["input_ids"])


def test_the_same_tokenizer_saved_twice_or_rewritten_has_one_digest(tiny_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    digest = tokenizer_digest(original)
    assert isinstance(digest, str) and len(digest) == 32
    once, twice = tmp_path / "once", tmp_path / "twice"
    original.save_pretrained(str(once))
    reloaded = load_tokenizer(once)  # sets a pad token where there is none, as the stages' loader does
    reloaded.save_pretrained(str(twice))
    assert tokenizer_digest(load_tokenizer(twice)) == tokenizer_digest(reloaded) == digest

    # other bytes, same behaviour: merges in the older "a b" form, a padding setting, keys in another
    # order, indented
    spec = json.loads((twice / "tokenizer.json").read_text())
    spec["model"]["merges"] = [" ".join(m) for m in spec["model"]["merges"]]
    spec["padding"] = {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None,
                       "pad_id": 3, "pad_type_id": 0, "pad_token": "<pad>"}  # fmt: skip
    shutil.copytree(twice, tmp_path / "rewritten")
    (tmp_path / "rewritten" / "tokenizer.json").write_text(json.dumps(dict(reversed(spec.items())), indent=2))
    rewritten = load_tokenizer(tmp_path / "rewritten")
    assert _ids(rewritten) == _ids(original) and tokenizer_digest(rewritten) == digest
    assert tokenizer_digest(None) is None


def _swap_two_vocab_ids(spec: dict[str, Any]) -> None:
    vocab = spec["model"]["vocab"]
    a, b = "\u0120the", "\u0120of"  # " the", " of" in byte-level BPE
    vocab[a], vocab[b] = vocab[b], vocab[a]


def _drop_a_merge(spec: dict[str, Any]) -> None:
    """Without the merge that makes " the" (the vocabulary unchanged)."""
    merges = spec["model"]["merges"]
    merges[:] = [m for m in merges if "".join(m) != "\u0120the"]


def _lowercase(spec: dict[str, Any]) -> None:
    spec["normalizer"] = {"type": "Lowercase"}


def _prefix_space(spec: dict[str, Any]) -> None:
    spec["pre_tokenizer"]["add_prefix_space"] = True


def _added_token(spec: dict[str, Any]) -> None:
    new_id = max(spec["model"]["vocab"].values()) + 1
    spec["added_tokens"].append(
        {"id": new_id, "content": "World", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": True, "special": False}
    )  # fmt: skip


@pytest.mark.parametrize(
    "edit",
    [_swap_two_vocab_ids, _drop_a_merge, _lowercase, _prefix_space, _added_token],
    ids=["vocab", "merges", "normalizer", "pre_tokenizer", "added_tokens"],
)
def test_a_tokenizer_that_encodes_differently_has_another_digest(tiny_tokenizer_dir, tmp_path, edit):
    base = load_tokenizer(tiny_tokenizer_dir)
    changed = _variant(tiny_tokenizer_dir, tmp_path / "changed", edit)
    assert len(changed) in (len(base), len(base) + 1)
    assert _ids(changed) != _ids(base), "the edit should change the ids of the text"
    assert tokenizer_digest(changed) != tokenizer_digest(base)


def test_another_bos_token_has_another_digest(tiny_tokenizer_dir, tmp_path):
    """The ids the tokenize stage puts around each document are part of the digest."""
    shutil.copytree(tiny_tokenizer_dir, tmp_path / "bos")
    config = json.loads((tmp_path / "bos" / "tokenizer_config.json").read_text())
    (tmp_path / "bos" / "tokenizer_config.json").write_text(json.dumps({**config, "bos_token": "<unk>"}))
    base, changed = load_tokenizer(tiny_tokenizer_dir), load_tokenizer(tmp_path / "bos")
    assert changed.bos_token_id != base.bos_token_id and _ids(changed) == _ids(base)
    assert tokenizer_digest(changed) != tokenizer_digest(base)


def test_a_tokenizer_trained_on_other_text_with_the_same_vocabulary_size(tiny_tokenizer_dir, data_dir, train_tokenizer):
    """The issue's case: the same vocabulary size, another tokenizer."""
    base = load_tokenizer(tiny_tokenizer_dir)
    other = train_tokenizer([data_dir / "tinyshakespeare.txt"], vocab_size=len(base))
    assert len(other) == len(base) and other.bos_token_id == base.bos_token_id
    assert tokenizer_digest(other) != tokenizer_digest(base)
