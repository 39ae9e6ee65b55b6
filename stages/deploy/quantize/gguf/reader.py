"""Reading a GGUF file's metadata back (for reports and tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def read_gguf_metadata(path: str | Path) -> dict[str, Any]:
    """The file's scalar/string metadata (arrays are left out)."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(path))
    out: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if not f.types or f.types[0] == GGUFValueType.ARRAY:
            continue
        out[key] = f.contents()
    return out
