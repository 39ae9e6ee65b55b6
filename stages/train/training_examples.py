"""The examples a post-training stage (sft, reward, dpo, ppo) learns from:
its ``dataset`` input, or a local file named by its ``data_path`` parameter
(which then replaces the input), and the split of the train examples into
training and held-out ones."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recipe_runner import Artifact, StageError

from ..common.datasets import load_dataset_dict

#: the ``datasets`` builder of each file suffix data_path may have
FILE_FORMATS = {".json": "json", ".jsonl": "json", ".ndjson": "json", ".csv": "csv", ".parquet": "parquet"}


def load_examples(data_path: str | None, inputs: Mapping[str, Artifact | None], slot: str = "dataset") -> Any:
    """The stage's examples as a DatasetDict: the file data_path names (split
    'train'), else the dataset bound to input ``slot``."""
    if data_path:
        return read_data_file(Path(data_path))
    art = inputs.get(slot)
    if art is None:
        raise StageError(f"no input {slot!r} and no data_path: the stage has no examples to learn from")
    return load_dataset_dict(art, slot, require_split="train")


def read_data_file(path: Path) -> Any:
    """A .json / .jsonl / .csv / .parquet file (optionally .gz) as a DatasetDict with one split, 'train'."""
    from datasets import DatasetDict, load_dataset

    if not path.is_file():
        raise StageError(f"data_path: {path} is not a file")
    suffixes = [x for x in path.suffixes if x != ".gz"]
    fmt = FILE_FORMATS.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise StageError(f"data_path: {path}: unknown format (use .json, .jsonl, .csv or .parquet, optionally .gz)")
    try:
        ds = load_dataset(fmt, data_files=str(path), split="train")
    except Exception as e:  # datasets raises many types; the user needs the path, not a traceback
        raise StageError(f"data_path: cannot read {path} as {fmt}: {type(e).__name__}: {e}") from e
    return DatasetDict({"train": ds})


def train_eval_split(dsd: Any, eval_fraction: float, seed: int, max_eval: int | None = None) -> tuple[Any, Any]:
    """(train, eval or None): the 'validation' split when the dataset has one,
    else a seeded hold-out of ``eval_fraction`` of the train split."""
    train = dsd["train"]
    ev = dsd.get("validation")
    if ev is None and eval_fraction > 0 and len(train) >= 2:
        n_eval = max(1, int(round(len(train) * eval_fraction)))
        if max_eval:
            n_eval = min(n_eval, max_eval)
        n_eval = min(n_eval, len(train) - 1)
        split = train.train_test_split(test_size=n_eval, seed=seed, shuffle=True)
        train, ev = split["train"], split["test"]
    elif ev is not None and max_eval and len(ev) > max_eval:
        ev = ev.select(range(max_eval))
    return train, ev
