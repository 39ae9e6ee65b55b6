"""Errors the engine reports to users: every problem found in a recipe,
with its file, line and column, stage and field path, and a suggestion."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class Problem:
    message: str
    file: str | None = None
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based
    stage: str | None = None
    field: str | None = None  # dotted path inside the recipe
    suggestion: str | None = None

    def format(self) -> str:
        where = self.file or "<recipe>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        parts = [where + ":"]
        if self.stage:
            parts.append(f"stage '{self.stage}':")
        if self.field:
            parts.append(f"{self.field}:")
        parts.append(self.message)
        text = " ".join(parts)
        if self.suggestion:
            text += f" (did you mean '{self.suggestion}'?)"
        return text


class RecipeError(Exception):
    """An invalid recipe: all problems found, reported together (exit code 2)."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = list(problems)
        super().__init__(self.format())

    def format(self) -> str:
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in recipe:"
        return "\n".join([head] + ["  " + p.format() for p in self.problems])


class RunError(Exception):
    """A run that cannot proceed for a reason that is not a stage failure
    (locked run directory, missing upstream output for --only ...)."""


def closest(word: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return matches[0] if matches else None
