"""C4's line and page rules (Raffel et al. 2020), datatrove's implementation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .datatrove_rules import DatatroveRulesFilter, DatatroveRulesOptions


class C4QualityOptions(DatatroveRulesOptions):
    """C4's line and page rules (Raffel et al. 2020), datatrove's
    implementation.  It edits the text: only the lines that pass are kept."""

    type: Literal["c4"] = Field(description="'c4'")
    split_paragraph: bool = Field(True, description="Apply the line rules to lines (True, as C4) or sentences.")
    remove_citations: bool = Field(True, description="Remove Wikipedia-style citations like [1] or [edit].")
    filter_no_terminal_punct: bool = Field(True, description="Remove lines not ending in terminal punctuation.")
    min_num_sentences: int = Field(
        5, ge=-1, description="Drop pages with fewer sentences after line filtering (C4: 5; -1 disables)."
    )
    min_words_per_line: int = Field(3, ge=-1, description="Remove lines with fewer words (C4: 3; -1 disables).")
    max_word_length: int = Field(
        1000, ge=-1, description="Remove lines with a longer word (C4 code: 1000; -1 disables)."
    )
    filter_lorem_ipsum: bool = Field(True, description="Drop pages containing 'lorem ipsum'.")
    filter_javascript: bool = Field(True, description="Remove lines mentioning 'javascript'.")
    filter_curly_bracket: bool = Field(True, description="Drop pages containing '{' (note: this drops source code).")
    filter_policy: bool = Field(True, description="Remove lines about cookies / terms of use / privacy policy.")


class C4QualityFilter(DatatroveRulesFilter[C4QualityOptions]):
    Options = C4QualityOptions
    rules = "C4QualityFilter"
    edits_text = True
