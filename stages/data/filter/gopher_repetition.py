"""Gopher's repetition rules (Rae et al. 2021, table A1), datatrove's implementation."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from .base import Fraction
from .batch_words import BatchWords
from .datatrove_rules import DatatroveRulesFilter, DatatroveRulesOptions

#: words per n-gram: from 1 to a paragraph's worth
NGramSize = Annotated[int, Field(ge=1, le=1000)]


class GopherRepetitionOptions(DatatroveRulesOptions):
    """Gopher repetition rules (Rae et al. 2021, table A1), datatrove's
    implementation; defaults are the paper's thresholds."""

    type: Literal["gopher_repetition"] = Field(description="'gopher_repetition'")
    dup_line_frac: Fraction | None = Field(
        0.3, description="Most duplicated lines, as a fraction of lines (paper: 0.3)."
    )
    dup_para_frac: Fraction | None = Field(0.3, description="Most duplicated paragraphs, as a fraction (paper: 0.3).")
    dup_line_char_frac: Fraction | None = Field(0.2, description="Most characters in duplicated lines (paper: 0.2).")
    dup_para_char_frac: Fraction | None = Field(
        0.2, description="Most characters in duplicated paragraphs (paper: 0.2)."
    )
    top_n_grams: list[tuple[NGramSize, Fraction]] = Field(
        [(2, 0.2), (3, 0.18), (4, 0.16)],
        description=(
            "(n, fraction): most characters covered by the most frequent n-gram (paper: 2->0.2, 3->0.18, 4->0.16)."
        ),
    )
    dup_n_grams: list[tuple[NGramSize, Fraction]] = Field(
        [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)],
        description="(n, fraction): most characters in duplicated n-grams (paper: 5->0.15 ... 10->0.10).",
    )


class GopherRepetitionFilter(DatatroveRulesFilter[GopherRepetitionOptions]):
    Options = GopherRepetitionOptions
    rules = "GopherRepetitionFilter"

    def rules_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """datatrove wants the n-gram thresholds as tuples."""
        return {**options, **{k: tuple(tuple(x) for x in options[k]) for k in ("top_n_grams", "dup_n_grams")}}

    def batch_reasons(self, texts: Any, words: BatchWords) -> Any:
        """datatrove's rules, vectorised (:mod:`.repetition_rules`)."""
        from .repetition_rules import repetition_reasons

        return repetition_reasons(texts, words, self.options)
