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


class Verdicts:
    """The reason each document of a batch is dropped for ('' while kept), the
    rules applied in order: a rule only sees the documents no earlier one dropped."""

    def __init__(self, n_docs: int):
        import numpy as np

        self.reasons = np.full(n_docs, "", dtype=object)
        self.alive = np.ones(n_docs, dtype=bool)

    def drop(self, failed: Any, reason: Any, docs: Any = None) -> None:
        """Drop the live documents that ``failed`` (a bool per document, or per
        one of ``docs`` when given) for ``reason``."""
        import numpy as np

        mask = np.zeros(len(self.alive), dtype=bool)
        if docs is None:
            mask[:] = failed
        else:
            mask[docs] = failed
        mask &= self.alive
        self.reasons[mask] = reason
        self.alive &= ~mask
