"""Gopher's quality rules (Rae et al. 2021, appendix A), datatrove's implementation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .base import Fraction, NonNegative
from .batch_words import BatchWords
from .datatrove_rules import DatatroveRulesFilter, DatatroveRulesOptions


class GopherQualityOptions(DatatroveRulesOptions):
    """Gopher quality rules (Rae et al. 2021, appendix A), datatrove's
    implementation; defaults are the paper's thresholds."""

    ordered_bounds = (("min_doc_words", "max_doc_words"), ("min_avg_word_length", "max_avg_word_length"))

    type: Literal["gopher_quality"] = Field(description="'gopher_quality'")
    min_doc_words: int | None = Field(50, ge=0, description="Fewest non-symbol words (paper: 50).")
    max_doc_words: int | None = Field(100_000, ge=0, description="Most non-symbol words (paper: 100,000).")
    min_avg_word_length: NonNegative | None = Field(3, description="Smallest mean word length (paper: 3).")
    max_avg_word_length: NonNegative | None = Field(10, description="Largest mean word length (paper: 10).")
    max_symbol_word_ratio: NonNegative | None = Field(0.1, description="Most '#' or ellipses per word (paper: 0.1).")
    max_bullet_lines_ratio: Fraction | None = Field(0.9, description="Most lines starting with a bullet (paper: 0.9).")
    max_ellipsis_lines_ratio: Fraction | None = Field(
        0.3, description="Most lines ending with an ellipsis (paper: 0.3)."
    )
    max_non_alpha_words_ratio: Fraction | None = Field(
        0.8, description="Fewest words with an alphabetic character, as a fraction (paper: 0.8; datatrove's name)."
    )
    min_stop_words: int | None = Field(2, ge=0, description="Fewest distinct stop words present (paper: 2).")
    stop_words: list[str] | None = Field(
        None, description="Stop words (default: the paper's: the, be, to, of, and, that, have, with)."
    )


class GopherQualityFilter(DatatroveRulesFilter[GopherQualityOptions]):
    Options = GopherQualityOptions
    rules = "GopherQualityFilter"

    def batch_reasons(self, texts: Any, words: BatchWords) -> Any:
        """datatrove's rules, vectorised (:mod:`.quality_rules`); datatrove's
        own code for the texts without words (empty ones included)."""
        import numpy as np

        from .quality_rules import quality_reasons

        reasons = quality_reasons(texts, words, self.options)
        for i in np.flatnonzero(words.per_doc == 0).tolist():
            keep, why = self.verdict(texts[i].as_py())
            reasons[i] = "" if keep else why
        return reasons
