"""The course's ``paragraph_repetition_filter`` (Gopher's paragraph rules), vectorised with pyarrow."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .arrow_text import PY_WHITESPACE, counts_per_document
from .base import DocumentFilter, FilterDecision, FilterOptions, Fraction


class ParagraphRepetitionOptions(FilterOptions):
    """The course's paragraph_repetition_filter (Gopher's paragraph rules):
    paragraphs are split on two or more newlines after stripping the text."""

    type: Literal["paragraph_repetition"] = Field(description="'paragraph_repetition'")
    max_duplicate_paragraph_fraction: Fraction = Field(
        0.3, description="Drop when repeated paragraphs / paragraphs exceeds this (course: 0.3)."
    )
    max_duplicate_char_fraction: Fraction = Field(
        0.2,
        description="Drop when characters in repeated paragraphs / all characters exceeds this (course: 0.2).",
    )


class ParagraphRepetitionFilter(DocumentFilter[ParagraphRepetitionOptions]):
    Options = ParagraphRepetitionOptions
    vectorised = True

    def decide(self, texts: Any) -> FilterDecision:
        import numpy as np
        import pyarrow.compute as pc

        total_chars = pc.utf8_length(texts).to_numpy(zero_copy_only=False).astype(np.float64)
        paras = pc.split_pattern_regex(pc.utf8_trim(texts, characters=PY_WHITESPACE), r"\n{2,}")
        n_paras = pc.list_value_length(paras).to_numpy(zero_copy_only=False).astype(np.int64)
        dup_paras, dup_chars = _repeated_paragraphs(pc.list_flatten(paras), n_paras)
        with np.errstate(divide="ignore", invalid="ignore"):
            frac_p = dup_paras / np.maximum(n_paras, 1)
            frac_c = np.where(total_chars > 0, dup_chars / np.where(total_chars > 0, total_chars, 1), 0.0)
        empty = total_chars == 0
        bad_p = frac_p > self.options.max_duplicate_paragraph_fraction
        bad_c = frac_c > self.options.max_duplicate_char_fraction
        reasons = np.where(empty, "empty", np.where(bad_p, "duplicate_paragraphs", "duplicate_chars"))
        return FilterDecision(keep=~(empty | bad_p | bad_c), reasons=reasons)


def _repeated_paragraphs(flat: Any, n_paras: Any) -> tuple[Any, Any]:
    """Per document: how many of its paragraphs repeat an earlier one of the
    same document, and their characters (the course's ``find_duplicates``)."""
    import numpy as np
    import pyarrow.compute as pc

    codes = pc.dictionary_encode(flat).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    doc = np.repeat(np.arange(len(n_paras), dtype=np.int64), n_paras)
    key = doc * (int(codes.max(initial=0)) + 1) + codes
    _, first = np.unique(key, return_index=True)
    dup = np.ones(len(flat), dtype=bool)
    dup[first] = False
    plen = pc.utf8_length(flat).to_numpy(zero_copy_only=False).astype(np.int64)
    return counts_per_document(dup, n_paras), counts_per_document(np.where(dup, plen, 0), n_paras)
