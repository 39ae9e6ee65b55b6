"""FineWeb's extra quality rules (Penedo et al. 2024), datatrove's implementation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Fraction, NonNegative
from .datatrove_rules import DatatroveRulesFilter, DatatroveRulesOptions


class FineWebQualityOptions(DatatroveRulesOptions):
    """FineWeb's extra quality rules (Penedo et al. 2024), datatrove's implementation."""

    type: Literal["fineweb"] = Field(description="'fineweb'")
    line_punct_thr: Fraction = Field(
        0.12, description="Fewest lines ending in terminal punctuation, as a fraction (0.12)."
    )
    line_punct_exclude_zero: bool = Field(False, description="Keep documents where no line ends in punctuation.")
    short_line_thr: Fraction = Field(0.67, description="Most lines that are short, as a fraction (0.67).")
    short_line_length: int = Field(30, ge=0, description="A line this long or shorter is short (30).")
    char_duplicates_ratio: Fraction = Field(
        0.01, description="Most characters in duplicated lines, as a fraction (0.01)."
    )
    new_line_ratio: NonNegative = Field(0.3, description="Most newlines per word (0.3).")


class FineWebQualityFilter(DatatroveRulesFilter[FineWebQualityOptions]):
    Options = FineWebQualityOptions
    rules = "FineWebQualityFilter"
