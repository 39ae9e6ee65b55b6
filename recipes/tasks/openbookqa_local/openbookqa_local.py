"""OpenBookQA (500 test questions, 4 choices) from the shipped
recipes/data/openbookqa.jsonl, for lm-eval offline; scored like lm-eval's
``openbookqa`` (acc and length-normalised acc_norm over the choices).
The data file resolves relative to this module; ``dataset_kwargs:
{data_file: ...}`` overrides it."""

from __future__ import annotations

from pathlib import Path

DATA_FILE = Path(__file__).resolve().parents[2] / "data" / "openbookqa.jsonl"


def _flatten(batch: dict) -> dict:
    return {
        "question_stem": [q["stem"] for q in batch["question"]],
        "choices": [
            {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]}
            for q in batch["question"]
        ],
    }


def load(data_file: str | None = None, **_: object):
    """lm-eval ``custom_dataset``: a DatasetDict with a 'test' split."""
    import datasets

    path = Path(data_file) if data_file else DATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"OpenBookQA JSONL not found at {path}")
    ds = datasets.Dataset.from_json(str(path))
    ds = ds.map(_flatten, batched=True, remove_columns=["question"])
    return datasets.DatasetDict({"test": ds})
