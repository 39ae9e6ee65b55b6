"""The preference-pair stages (reward, dpo) check the pair columns."""

from __future__ import annotations

from pathlib import Path

import pytest

from recipe_runner.artifacts import DATASET, Artifact
from recipe_runner.stage import StageError
from recipe_runner.testing import run_stage
from recipe_runner_stages.train.dpo.stage import DPOStage
from recipe_runner_stages.train.reward.stage import RewardStage


def test_preference_columns_are_checked(tmp_path: Path, tiny_model: Artifact) -> None:
    from datasets import Dataset, DatasetDict

    d = tmp_path / "d"
    DatasetDict({"train": Dataset.from_list([{"text": "a", "good": "b"}] * 4)}).save_to_disk(str(d))
    for stage in (RewardStage, DPOStage):
        with pytest.raises(StageError, match="chosen"):
            run_stage(
                stage,
                {"max_steps": 1},
                inputs={"model": tiny_model, "dataset": Artifact(DATASET, d)},
                workdir=tmp_path / stage.name,
            )
