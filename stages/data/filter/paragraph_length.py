"""The course's ``paragraph_length_filter``, vectorised with pyarrow."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .arrow_text import counts_per_document
from .base import DocumentFilter, FilterDecision, FilterOptions


class ParagraphLengthOptions(FilterOptions):
    """The course's paragraph_length_filter: drop a document with fewer than
    ``min_lines`` lines, or whose ``top_lines`` longest lines are not all at
    least ``min_line_chars`` characters long."""

    type: Literal["paragraph_length"] = Field(description="'paragraph_length'")
    min_lines: int = Field(3, ge=0, description="Fewest lines ('\\n'-separated) a document may have (course: 3).")
    top_lines: int = Field(3, ge=1, description="How many of the longest lines must be long enough (course: 3).")
    min_line_chars: int = Field(3, ge=0, description="Characters each of those lines needs (course: 3).")


class ParagraphLengthFilter(DocumentFilter[ParagraphLengthOptions]):
    Options = ParagraphLengthOptions
    vectorised = True

    def decide(self, texts: Any) -> FilterDecision:
        import numpy as np
        import pyarrow.compute as pc

        o = self.options
        lines = pc.split_pattern(texts, "\n")
        n_lines = pc.list_value_length(lines).to_numpy(zero_copy_only=False).astype(np.int64)
        lens = pc.utf8_length(pc.list_flatten(lines)).to_numpy(zero_copy_only=False)
        long_enough = counts_per_document(lens >= o.min_line_chars, n_lines)
        few = n_lines < o.min_lines
        short = long_enough < np.minimum(o.top_lines, n_lines)
        return FilterDecision(keep=~(few | short), reasons=np.where(few, "too_few_lines", "short_lines"))
