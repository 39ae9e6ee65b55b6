"""Helpers of the vectorised filters, which work on whole Arrow arrays of texts."""

from __future__ import annotations

from typing import Any

#: the characters ``str.strip()`` strips (Python's Unicode whitespace), for ``pyarrow.compute.utf8_trim``
PY_WHITESPACE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())


def counts_per_document(flags: Any, lengths: Any) -> Any:
    """Sum of ``flags`` (one per list element: a line, a paragraph) per
    document, given each document's number of elements."""
    import numpy as np

    cs = np.concatenate(([0], np.cumsum(flags, dtype=np.int64)))
    ends = np.cumsum(lengths, dtype=np.int64)
    return cs[ends] - cs[ends - lengths]
