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
