"""Exact duplicates: a 64-bit hash (xxh3) of each document's normalized text;
a document whose hash an earlier document has is a duplicate."""

from __future__ import annotations

import re
from typing import Any, Literal

Normalize = Literal["none", "whitespace", "lower", "alnum"]

_NON_ALNUM = re.compile(r"[^\w\s]|_")


def normalize_text(t: str, how: str) -> str:
    """The text as compared: as is ('none'), whitespace runs as one space
    ('whitespace'), also lowercased ('lower'), also only letters, digits and
    spaces ('alnum')."""
    if how == "none":
        return t
    if how == "whitespace":
        return " ".join(t.split())
    if how == "lower":
        return " ".join(t.lower().split())
    return " ".join(_NON_ALNUM.sub(" ", t.lower()).split())


def exact_hashes(texts: list[str], normalize: str) -> Any:
    """A uint64 hash of each normalized text."""
    import numpy as np
    import xxhash

    return np.fromiter(
        (xxhash.xxh3_64_intdigest(normalize_text(t, normalize).encode("utf-8", "surrogatepass")) for t in texts),
        dtype=np.uint64,
        count=len(texts),
    )


def first_occurrences(hashes: Any) -> Any:
    """A bool per document: the first one with its hash (the others are duplicates)."""
    import numpy as np

    _, first = np.unique(hashes, return_index=True)
    keep = np.zeros(len(hashes), dtype=bool)
    keep[first] = True
    return keep
