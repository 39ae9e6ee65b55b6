"""Fixtures of the train-family tests: small real datasets saved as the data
stages save them (DatasetDict on disk), the session's tiny model as a
``model`` artifact, and stage contexts as the runner builds them."""

from __future__ import annotations

import gzip
import json
import logging
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from recipe_runner.artifacts import DATASET, MODEL, Artifact
from recipe_runner.stage import Params, StageContext

MakeContext = Callable[..., StageContext[Any]]


@pytest.fixture
def make_context(tmp_path: Path) -> MakeContext:
    """``make_context(params, inputs=None, name="stage", seed=5, workdir=tmp_path)``:
    a StageContext with outputs under workdir/out and checkpoints under
    workdir/ckpt."""

    def make(
        params: Params | None,
        inputs: Mapping[str, Artifact | None] | None = None,
        name: str = "stage",
        seed: int = 5,
        workdir: Path | None = None,
    ) -> StageContext[Any]:
        root = workdir or tmp_path
        return StageContext(
            name=name,
            params=params,
            inputs=dict(inputs or {}),
            output_dir=root / "out",
            checkpoint_dir=root / "ckpt",
            seed=seed,
            log=logging.getLogger(f"test.{name}"),
        )

    return make


@pytest.fixture(scope="session")
def alpaca_dataset(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Artifact:
    """The first 96 Alpaca records of instruction-data.json (text = instruction)."""
    from datasets import Dataset, DatasetDict

    recs = json.loads((data_dir / "instruction-data.json").read_text())[:96]
    for r in recs:
        r["text"] = r["instruction"]
    out = tmp_path_factory.mktemp("alpaca")
    DatasetDict({"train": Dataset.from_list(recs)}).save_to_disk(str(out))
    return Artifact(DATASET, out)


@pytest.fixture(scope="session")
def hh_dataset(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Artifact:
    """The first 64 hh-rlhf harmless-base pairs (chosen / rejected dialogues)."""
    from datasets import Dataset, DatasetDict

    with gzip.open(data_dir / "hh-rlhf-harmless-base-test.jsonl.gz", "rt") as f:
        recs = [json.loads(line) for _, line in zip(range(64), f, strict=False)]
    out = tmp_path_factory.mktemp("hh")
    DatasetDict({"train": Dataset.from_list(recs)}).save_to_disk(str(out))
    return Artifact(DATASET, out)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> Artifact:
    return Artifact(MODEL, Path(tiny_model_dir), {"num_layers": 2})


@pytest.fixture(scope="session")
def separable_prefs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Artifact:
    """Preference pairs a tiny model can learn: the same instruction prompt,
    the chosen response is prose from the-verdict, the rejected one a run of
    digits.  100 train pairs + 20 validation pairs."""
    from datasets import Dataset, DatasetDict

    words = (data_dir / "the-verdict.txt").read_text().split()
    recs = json.loads((data_dir / "instruction-data.json").read_text())
    rng = random.Random(0)
    rows = []
    for i in range(120):
        start = rng.randrange(0, len(words) - 12)
        rows.append(
            {
                "prompt": recs[i]["instruction"][:60] + "\nAnswer:",
                "chosen": " " + " ".join(words[start : start + 8]),
                "rejected": " " + " ".join(str(rng.randrange(10)) for _ in range(10)),
            }
        )
    out = tmp_path_factory.mktemp("prefs")
    DatasetDict({"train": Dataset.from_list(rows[:100]), "validation": Dataset.from_list(rows[100:])}).save_to_disk(
        str(out)
    )
    return Artifact(DATASET, out)
