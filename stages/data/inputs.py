"""The document input of the filter, dedup and tokenize stages: a dataset
whose text column every split has."""

from __future__ import annotations

from typing import Any

from recipe_runner import Artifact, StageContext

from ..common.datasets import load_dataset_dict, require_column


def load_documents(ctx: StageContext[Any], text_column: str) -> tuple[Artifact, Any]:
    """``(artifact, DatasetDict)`` of the input 'dataset', checked to hold text in ``text_column``."""
    art = ctx.input("dataset")
    dd = load_dataset_dict(art, "dataset")
    require_column(
        dd, text_column, "dataset", text=True, hint="set the parameter 'text_column' to the column holding the text"
    )
    return art, dd
