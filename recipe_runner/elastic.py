"""Elastic resume: a distributed stage re-run with another process count
continues from the checkpoints the run under the previous count left.

The world size is part of a distributed stage's key (ranks x per-device batch
is the global batch), so by default another count trains from scratch under
its own key.  With ``launch: {elastic: true}`` the runner looks, before the
stage starts with no checkpoint of its own, for the checkpoint directory of
the same stage whose key differs only in the world size and the parameters
declared per process (per-device batch, gradient accumulation), and continues from
it (a copy whose large files -- weights, optimizer state, which the Trainer
never rewrites -- are hard links, so the other count's checkpoints stay
usable and nothing large is duplicated).  The
output is committed under the current key, marked in its record with where
it continued from, and never pushed to a shared cache: a fresh run under that
key would not give the same bytes.

Each checkpoint directory gets a small ``<dir>.key.json`` beside it, written
when the stage starts: its key, the key without the world size, and the
world size."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .keys import digest
from .stage import per_process_fields
from .store import CHECKPOINT_KEY_SUFFIX as KEY_FILE_SUFFIX


def key_without_world_size(parts: dict[str, Any], params: BaseModel) -> str:
    """The key less what may change with the process count: the world size and
    the parameters declared :func:`~recipe_runner.stage.per_process`."""
    shared = {k: v for k, v in parts.items() if k != "world_size"}
    per_process = set(per_process_fields(params))
    shared["params"] = {k: v for k, v in parts["params"].items() if k not in per_process}
    return digest(shared)


def key_file(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + KEY_FILE_SUFFIX)


def record_checkpoint_key(ckpt: Path, fingerprint: str, parts: dict[str, Any], params: BaseModel) -> None:
    """Write what key ``ckpt``'s checkpoints were made under (once per stage start)."""
    facts = {
        "fingerprint": fingerprint,
        "without_world_size": key_without_world_size(parts, params),
        "world_size": parts.get("world_size", 1),
    }
    tmp = key_file(ckpt).with_suffix(".tmp")
    tmp.write_text(json.dumps(facts))
    os.replace(tmp, key_file(ckpt))


def _has_state(d: Path) -> bool:
    return d.is_dir() and any(d.iterdir())


def _siblings(ckpt: Path, stage: str) -> list[tuple[Path, dict[str, Any]]]:
    """Other checkpoint dirs of ``stage`` that hold state, with their key facts, newest first."""
    out = []
    for facts_path in ckpt.parent.glob(f"{stage}-*{KEY_FILE_SUFFIX}"):
        d = facts_path.with_name(facts_path.name[: -len(KEY_FILE_SUFFIX)])
        if d == ckpt or not _has_state(d):
            continue
        try:
            facts = json.loads(facts_path.read_text())
        except (OSError, ValueError):
            continue
        out.append((d, facts))
    return sorted(out, key=lambda df: df[0].stat().st_mtime, reverse=True)


def other_world_size(
    ckpt: Path, stage: str, parts: dict[str, Any], params: BaseModel
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint dir of ``stage`` (with its key facts) made under
    the same key as ``parts`` but another world size."""
    want = key_without_world_size(parts, params)
    for other, facts in _siblings(ckpt, stage):
        if facts.get("without_world_size") == want and facts.get("world_size") != parts.get("world_size", 1):
            return other, facts
    return None


def adopt_other_world_size(ckpt: Path, stage: str, parts: dict[str, Any], params: BaseModel) -> dict[str, Any] | None:
    """Fill the empty ``ckpt`` with a copy of :func:`other_world_size`'s dir;
    what it continued from (``fingerprint``, ``world_size``, ``from``), or None."""
    found = None if _has_state(ckpt) else other_world_size(ckpt, stage, parts, params)
    if found is None:
        return None
    other, facts = found
    shutil.rmtree(ckpt, ignore_errors=True)
    shutil.copytree(other, ckpt, copy_function=_link_or_copy)
    return {"fingerprint": facts["fingerprint"], "world_size": facts["world_size"], "from": str(other)}


LINK_AT_BYTES = 1 << 20  # smaller files (states, tracker ids) are copied: they may be rewritten in place


def _link_or_copy(src: str, dst: str) -> None:
    if os.path.getsize(src) >= LINK_AT_BYTES:
        try:
            os.link(src, dst)
            return
        except OSError:  # another filesystem, or links not allowed
            pass
    shutil.copy2(src, dst)
