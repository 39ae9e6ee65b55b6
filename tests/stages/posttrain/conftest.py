"""Fixtures of the post-training tests: small real datasets saved as the
data stages save them (DatasetDict on disk) and a model with a little
language-model training, so generations are not pure noise."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from recipe_runner.artifacts import DATASET, MODEL, Artifact


@pytest.fixture(scope="session")
def alpaca_dataset(tmp_path_factory, data_dir) -> Artifact:
    from datasets import Dataset, DatasetDict

    recs = json.loads((data_dir / "instruction-data.json").read_text())[:96]
    for r in recs:
        r["text"] = r["instruction"]
    out = tmp_path_factory.mktemp("alpaca")
    DatasetDict({"train": Dataset.from_list(recs)}).save_to_disk(str(out))
    return Artifact(DATASET, out)


@pytest.fixture(scope="session")
def hh_dataset(tmp_path_factory, data_dir) -> Artifact:
    from datasets import Dataset, DatasetDict

    with gzip.open(data_dir / "hh-rlhf-harmless-base-test.jsonl.gz", "rt") as f:
        recs = [json.loads(line) for _, line in zip(range(64), f)]
    out = tmp_path_factory.mktemp("hh")
    DatasetDict({"train": Dataset.from_list(recs)}).save_to_disk(str(out))
    return Artifact(DATASET, out)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir) -> Artifact:
    return Artifact(MODEL, Path(tiny_model_dir), {"num_layers": 2})


@pytest.fixture(scope="session")
def separable_prefs(tmp_path_factory, data_dir) -> Artifact:
    """Preference pairs a tiny model can learn: the same instruction prompt,
    the chosen response is prose from the-verdict, the rejected one a run of
    digits.  100 train pairs + 20 validation pairs."""
    import random

    from datasets import Dataset, DatasetDict

    words = (data_dir / "the-verdict.txt").read_text().split()
    recs = json.loads((data_dir / "instruction-data.json").read_text())
    rng = random.Random(0)
    rows = []
    for i in range(120):
        start = rng.randrange(0, len(words) - 12)
        rows.append({
            "prompt": recs[i]["instruction"][:60] + "\nAnswer:",
            "chosen": " " + " ".join(words[start:start + 8]),
            "rejected": " " + " ".join(str(rng.randrange(10)) for _ in range(10)),
        })
    out = tmp_path_factory.mktemp("prefs")
    DatasetDict({"train": Dataset.from_list(rows[:100]), "validation": Dataset.from_list(rows[100:])}).save_to_disk(str(out))
    return Artifact(DATASET, out)
