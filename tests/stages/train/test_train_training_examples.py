"""training_examples.py: data_path reads a structured file directly (the
stage then takes no 'dataset' input, and the file's content enters its key)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipe_runner.stage import StageError
from recipe_runner_stages.train.reward.stage import RewardParams, RewardStage
from recipe_runner_stages.train.sft.params import SFTParams
from recipe_runner_stages.train.sft.stage import SFTStage
from recipe_runner_stages.train.training_examples import load_examples


def test_data_path_reads_structured_files_directly(tmp_path: Path, data_dir: Path) -> None:
    hh = data_dir / "hh-rlhf-harmless-base-test.jsonl.gz"
    p = RewardParams(data_path=str(hh))
    assert "dataset" not in RewardStage.input_slots(p) and "model" in RewardStage.input_slots(p)
    assert RewardStage.local_inputs(p) == {"data_path": hh}
    dsd = load_examples(p.data_path, {})
    assert len(dsd["train"]) == 2312 and {"chosen", "rejected"} <= set(dsd["train"].column_names)
    sp = SFTParams(data_path=str(data_dir / "instruction-data.json"), model_name_or_path="x")
    assert set(SFTStage.input_slots(sp)) == set()
    first = json.loads((data_dir / "instruction-data.json").read_text())[0]
    assert load_examples(sp.data_path, {})["train"][0] == first
    with pytest.raises(StageError, match="not a file"):
        load_examples(SFTParams(data_path=str(tmp_path / "nope.json")).data_path, {})
