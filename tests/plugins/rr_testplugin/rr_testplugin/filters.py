"""A document filter registered by a third-party distribution, exactly as
the built-in filters are: one class in the entry-point group
``recipe_runner.filters``, its options model beside it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from recipe_runner_stages.data.filter import DocumentFilter, FilterOptions


class HasWordOptions(FilterOptions):
    type: Literal["has_word"] = "has_word"
    word: str


class HasWord(DocumentFilter[HasWordOptions]):
    """Keeps the documents that contain ``word``."""

    Options = HasWordOptions

    def keep(self, texts: list[str]) -> Iterable[bool]:
        return [self.options.word in t for t in texts]
