"""What the judge works on and what it leaves: instruction records (Alpaca
``instruction`` / ``input`` / ``output``) from a .json / .jsonl file or the
eval stage's dataset input, and the verdict table saved as JSONL and CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from recipe_runner import DATASET, Artifact, StageError

from ...common.datasets import describe_input, load_dataset_dict, pick_split


def load_instruction_items(path: str | Path, n: int | None = None) -> list[dict[str, Any]]:
    """Alpaca records (instruction / input / output) from a .json list or a
    .jsonl file; the last ``n`` of them (the held-out tail)."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"judge.data: {path} is not a file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            items = json.loads(text)
    except ValueError as e:
        raise StageError(f"judge.data: {path} is not valid JSON / JSONL: {e}") from e
    if not isinstance(items, list) or not items or not all(isinstance(x, dict) and "instruction" in x for x in items):
        raise StageError(f"judge.data: {path} must hold a list of records with an 'instruction' field")
    return items[-n:] if n else items


def dataset_instruction_items(art: Artifact | None, split: str | None) -> list[dict[str, Any]]:
    """The records of the held-out split ('validation', else 'test', unless
    ``split`` names one) of the eval stage's dataset input, which must have an
    'instruction' column."""
    if art is None or art.kind != DATASET:
        raise StageError(
            "eval: the judge needs instructions: set judge.data (a .json / .jsonl file of Alpaca "
            "records) or connect a dataset input with an 'instruction' column"
        )
    where = f"eval: {describe_input(art, 'dataset')}"
    name, rows = pick_split(load_dataset_dict(art), split, fallbacks=("validation", "test"), where=where)
    if "instruction" not in rows.column_names:
        raise StageError(
            f"eval: split {name!r} of {art.path} has no 'instruction' column for the judge "
            f"(columns: {', '.join(rows.column_names)}); set judge.data instead"
        )
    records: list[dict[str, Any]] = rows.to_list()
    return records


def save_table(rows: list[dict[str, Any]], out_dir: str | Path, stem: str = "judge") -> dict[str, str]:
    """Write rows as ``<stem>.jsonl`` and ``<stem>.csv``; returns the file names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jl, cs = out / f"{stem}.jsonl", out / f"{stem}.csv"
    with jl.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    with cs.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    return {"jsonl": jl.name, "csv": cs.name}
