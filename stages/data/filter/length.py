"""Bounds on a document's characters and words, vectorised with pyarrow."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .base import DocumentFilter, FilterDecision, FilterOptions


class LengthOptions(FilterOptions):
    """Bounds on characters and words (words: runs of non-whitespace)."""

    ordered_bounds = (("min_chars", "max_chars"), ("min_words", "max_words"))

    type: Literal["length"] = Field(description="'length'")
    min_chars: int | None = Field(None, ge=0, description="Fewest characters (None: no bound).")
    max_chars: int | None = Field(None, ge=0, description="Most characters (None: no bound).")
    min_words: int | None = Field(None, ge=0, description="Fewest words (None: no bound).")
    max_words: int | None = Field(None, ge=0, description="Most words (None: no bound).")


class LengthFilter(DocumentFilter[LengthOptions]):
    Options = LengthOptions
    vectorised = True

    def decide(self, texts: Any) -> FilterDecision:
        import numpy as np
        import pyarrow.compute as pc

        o = self.options
        keep = np.ones(len(texts), dtype=bool)
        reasons = np.full(len(texts), "", dtype=object)
        if o.min_chars is not None or o.max_chars is not None:
            chars = pc.utf8_length(texts).to_numpy(zero_copy_only=False)
            _bound(chars, o.min_chars, o.max_chars, "chars", keep, reasons)
        if o.min_words is not None or o.max_words is not None:
            words = pc.count_substring_regex(texts, r"\S+").to_numpy(zero_copy_only=False)
            _bound(words, o.min_words, o.max_words, "words", keep, reasons)
        return FilterDecision(keep=keep, reasons=reasons)


def _bound(counts: Any, low: int | None, high: int | None, unit: str, keep: Any, reasons: Any) -> None:
    """Drop (in ``keep``, in place) the documents with ``counts`` outside
    [low, high]; a document keeps the first reason it fails for."""
    if low is not None:
        _drop(counts < low, f"too_few_{unit}", keep, reasons)
    if high is not None:
        _drop(counts > high, f"too_many_{unit}", keep, reasons)


def _drop(bad: Any, reason: str, keep: Any, reasons: Any) -> None:
    reasons[bad & keep] = reason
    keep &= ~bad
