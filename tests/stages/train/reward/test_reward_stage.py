"""reward stage: a reward model that learns a separable preference and
reports its held-out pairwise accuracy."""

from __future__ import annotations

from pathlib import Path

import torch

from recipe_runner.artifacts import Artifact
from recipe_runner.testing import run_stage
from recipe_runner_stages.train.reward.stage import RewardStage


def test_reward_model_learns_a_separable_preference(
    tmp_path: Path, tiny_model: Artifact, separable_prefs: Artifact
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    res = run_stage(
        RewardStage,
        {
            "num_train_epochs": 1,
            "learning_rate": 2e-3,
            "per_device_train_batch_size": 8,
            "max_length": 80,
            "logging_steps": 5,
        },
        inputs={"model": tiny_model, "dataset": separable_prefs},
        workdir=tmp_path,
    )
    m = res.metrics
    assert m["train_pairs"] == 100 and m["eval_pairs"] == 20
    assert m["eval_accuracy"] >= 0.85, m
    assert m["eval_margin"] > m["eval_margin_before"]
    out = res.outputs["reward_model"]
    assert out.kind == "reward_model" and out.meta["eval_accuracy"] == m["eval_accuracy"]
    rm = AutoModelForSequenceClassification.from_pretrained(str(out.path))
    tok = AutoTokenizer.from_pretrained(str(out.path))
    assert rm.config.num_labels == 1 and tok.pad_token is not None and rm.config.pad_token_id == tok.pad_token_id
    enc = tok(
        ["Say something\nAnswer: of the picture and the", "Say something\nAnswer: 3 1 4 1 5 9 2 6"],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        prose, digits = rm(**enc).logits[:, 0].tolist()
    assert prose > digits
