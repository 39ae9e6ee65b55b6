"""Fixtures of the ppo tests: a PPO engine on the tiny model, and a reward
model made as the reward stage makes it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from recipe_runner.artifacts import REWARD_MODEL, Artifact

MakeEngine = Callable[..., tuple[Any, Any, Any]]


@pytest.fixture
def make_engine(tiny_model_dir: Path) -> MakeEngine:
    """``make_engine(**settings)``: (PPOEngine, tokenizer, reference model) on
    the tiny model, seeded, with fast settings (lr 1e-2, batch 16 in
    mini-batches of 4, 2 PPO epochs, 8 new tokens, beta 0.05) that
    ``settings`` override."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipe_runner_stages.train.ppo.engine import PPOEngine
    from recipe_runner_stages.train.ppo.params import PPOParams
    from recipe_runner_stages.train.ppo.value_head import PolicyWithValueHead

    def make(**settings: Any) -> tuple[Any, Any, Any]:
        torch.manual_seed(0)
        tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
        lm = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
        ref = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
        fast = {
            "learning_rate": 1e-2,
            "batch_size": 16,
            "mini_batch_size": 4,
            "ppo_epochs": 2,
            "max_new_tokens": 8,
            "init_kl_coef": 0.05,
        }
        cfg = PPOParams.model_validate({**fast, **settings})
        return PPOEngine(PolicyWithValueHead(lm), ref, tok, cfg), tok, ref

    return make


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Artifact:
    """A reward model made as the reward stage makes it (a 1-output classifier
    initialised from the causal LM), untrained: the stage test checks the
    plumbing, the engine test checks learning."""
    import torch

    from recipe_runner_stages.common.models import load_tokenizer, save_model_dir
    from recipe_runner_stages.train.reward.scoring import load_reward_base

    out = tmp_path_factory.mktemp("rm")
    tok = load_tokenizer(tiny_model_dir)
    torch.manual_seed(1)
    save_model_dir(load_reward_base(str(tiny_model_dir), tok), tok, out)
    return Artifact(REWARD_MODEL, out)
