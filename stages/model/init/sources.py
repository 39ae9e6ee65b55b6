"""Where a base model or a tokenizer comes from: a local directory, or a hub
id that the hub (or its local cache) can serve now -- checked up front with
the shared hub policy, so a machine without network fails at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recipe_runner import StageError

from ...common.hub import in_hub_cache, unavailable_reason


def resolve_source(ref: str, what: str) -> str:
    """A local directory as is; a hub id when the hub can be used now or the
    id is in the local hub cache; otherwise a StageError saying why not."""
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise StageError(f"init: {what} {ref!r} is a file, expected a model/tokenizer directory")
        return str(path)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise StageError(f"init: {what} {ref!r} does not exist")
    why = unavailable_reason()
    if why is not None and not in_hub_cache(ref):
        raise StageError(
            f"init: {what} {ref!r} is not a local directory, not in the hub cache, and {why}: download it "
            "first (huggingface-cli download) and give its local path"
        )
    return ref


def local_config_value(ref: str, key: str) -> Any:
    """``key`` of ``ref/config.json`` when ``ref`` is a local model directory, else None."""
    config = Path(ref) / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text()).get(key)
    except (OSError, ValueError):
        return None
