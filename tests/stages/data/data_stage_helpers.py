"""Helpers shared by the data-stage tests (a uniquely named module, so that
`import` never picks up another directory's conftest)."""
from __future__ import annotations

from pathlib import Path

from recipe_runner.artifacts import DATASET, Artifact


def save_texts(path: Path, train: list[str], validation: list[str] | None = None, **columns) -> Artifact:
    """A dataset artifact (DatasetDict on disk) holding these texts."""
    from datasets import Dataset, DatasetDict

    splits = {"train": Dataset.from_dict({"text": list(train), **columns})}
    if validation is not None:
        splits["validation"] = Dataset.from_dict({"text": list(validation)})
    DatasetDict(splits).save_to_disk(str(path))
    return Artifact(DATASET, Path(path))


def load_split(art: Artifact, split: str = "train"):
    from datasets import load_from_disk

    return load_from_disk(str(art.path))[split]
