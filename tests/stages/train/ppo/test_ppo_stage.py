"""ppo stage: runs on a reward stage's model, reports reward before/after and
KL, saves the policy without its value head, and resumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recipe_runner.artifacts import Artifact
from recipe_runner.stage import StageError
from recipe_runner.testing import run_stage
from recipe_runner_stages.train.ppo.stage import PPOStage


def test_ppo_stage_reports_and_resumes(
    tmp_path: Path, tiny_model: Artifact, reward_model: Artifact, alpaca_dataset: Artifact
) -> None:
    from transformers import AutoModelForCausalLM

    params = {
        "batch_size": 4,
        "mini_batch_size": 2,
        "ppo_epochs": 1,
        "max_new_tokens": 4,
        "learning_rate": 1e-3,
        "eval_prompts": 4,
        "save_steps": 1,
        "max_prompt_length": 48,
    }
    inputs = {"model": tiny_model, "reward_model": reward_model, "dataset": alpaca_dataset}
    first = run_stage(PPOStage, {**params, "steps": 2}, inputs=inputs, workdir=tmp_path)
    m = first.metrics
    assert m["prompt_format"] == "alpaca" and m["eval_prompts"] == 4
    for k in ("reward_before", "reward_after", "kl", "kl_coef"):
        assert isinstance(m[k], float) and np.isfinite(m[k]), k
    out = first.outputs["model"].path
    assert (out / "ppo_history.jsonl").is_file() and len((out / "ppo_history.jsonl").read_text().splitlines()) == 2
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert not hasattr(model, "v_head")
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model.path))
    assert any(
        not torch.equal(a, b) for a, b in zip(model.state_dict().values(), base.state_dict().values(), strict=True)
    )

    second = run_stage(PPOStage, {**params, "steps": 3}, inputs=inputs, workdir=tmp_path)
    assert second.metrics["resumed_from_step"] == 2
    assert second.metrics["reward_before"] == m["reward_before"]  # kept from the checkpoint
    assert len((second.outputs["model"].path / "ppo_history.jsonl").read_text().splitlines()) == 3


def test_a_diverging_ppo_run_stops_naming_the_step(
    tmp_path: Path, tiny_model: Artifact, reward_model: Artifact, alpaca_dataset: Artifact
) -> None:
    """A learning rate that overflows the policy: PPO stops with the step named and writes no model."""
    params = {
        "batch_size": 4,
        "mini_batch_size": 2,
        "ppo_epochs": 1,
        "max_new_tokens": 4,
        "learning_rate": 1e30,
        "max_grad_norm": None,
        "eval_prompts": 4,
        "save_steps": 1,
        "max_prompt_length": 48,
        "steps": 4,
    }
    inputs = {"model": tiny_model, "reward_model": reward_model, "dataset": alpaca_dataset}
    with pytest.raises(StageError, match=r"ppo: training diverged (at|by) step \d"):
        run_stage(PPOStage, params, inputs=inputs, workdir=tmp_path)
    assert not (tmp_path / "output" / "model").exists()
