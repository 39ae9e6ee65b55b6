"""dpo stage: DPO widens the chosen-vs-rejected margin on held-out pairs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recipe_runner.artifacts import PREFERENCE_DATASET, Artifact
from recipe_runner.testing import run_stage
from recipe_runner_stages.train.dpo.stage import DPOStage


def test_dpo_widens_the_chosen_rejected_margin(tmp_path: Path, tiny_model: Artifact, separable_prefs: Artifact) -> None:
    from transformers import AutoModelForCausalLM

    pref = Artifact(PREFERENCE_DATASET, separable_prefs.path)
    res = run_stage(
        DPOStage,
        {
            "max_steps": 8,
            "learning_rate": 2e-3,
            "beta": 0.1,
            "per_device_train_batch_size": 8,
            "max_length": 64,
            "logging_steps": 4,
        },
        inputs={"model": tiny_model, "dataset": pref},
        workdir=tmp_path,
    )
    m = res.metrics
    assert m["before_rewards_margins"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at the start
    assert m["after_rewards_margins"] > 0.5, m
    assert m["after_rewards_accuracies"] >= 0.9
    assert m["after_loss"] < m["before_loss"]
    out = AutoModelForCausalLM.from_pretrained(str(res.outputs["model"].path))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model.path))
    assert any(
        not torch.equal(a, b) for a, b in zip(out.state_dict().values(), base.state_dict().values(), strict=True)
    )
