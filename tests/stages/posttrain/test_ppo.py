"""PPO: the algorithm raises a learnable reward, GAE and the adaptive KL
controller match their definitions, and the ppo stage runs on a reward
stage's model, reports reward before/after and KL, and resumes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recipe_runner.artifacts import REWARD_MODEL, Artifact
from recipe_runner.testing import run_stage
from recipe_runner_stages.train.posttrain_ppo import (AdaptiveKLController, PolicyWithValueHead, PPOEngine,
                                                      PPOSettings, mean_reward)
from recipe_runner_stages.train.ppo import PPOStage

PROMPTS = ["I had always thought", "It was not till", "She said that", "The picture was"] * 8


def _engine(model_dir, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    lm = AutoModelForCausalLM.from_pretrained(str(model_dir))
    ref = AutoModelForCausalLM.from_pretrained(str(model_dir))
    cfg = PPOSettings(**{"learning_rate": 1e-2, "batch_size": 16, "mini_batch_size": 4, "ppo_epochs": 2,
                         "max_new_tokens": 8, "init_kl_coef": 0.05, **kw})
    return PPOEngine(PolicyWithValueHead(lm), ref, tok, cfg), tok, ref


def test_ppo_raises_a_learnable_reward(tiny_model_dir):
    engine, tok, ref = _engine(tiny_model_dir)
    ref_state = {k: v.clone() for k, v in ref.state_dict().items()}
    queries = [tok(t, add_special_tokens=False)["input_ids"] for t in PROMPTS]
    favoured = set(range(100))  # reward: share of response tokens with an id below 100

    def reward(qs, rs):
        return [sum(t in favoured for t in r) / len(r) for r in rs]

    before = mean_reward(engine, queries, reward, seed=123)
    stats = []
    for step in range(8):
        qs = queries[16 * (step % 2):16 * (step % 2) + 16]
        rs = engine.generate(qs, generator_seed=step)
        stats.append(engine.step(qs, rs, reward(qs, rs), shuffle_seed=step))
    after = mean_reward(engine, queries, reward, seed=123)
    assert after > before + 0.1, (before, after)
    assert stats[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # first rollout: policy == reference
    assert stats[-1]["kl"] > 0.05  # the policy moved away from the reference, and the KL term saw it
    assert stats[-1]["vf_loss"] < stats[0]["vf_loss"]  # the value head learns the returns
    assert all(torch.equal(v, ref_state[k]) for k, v in ref.state_dict().items())  # the reference stays frozen


def test_adaptive_kl_controller_follows_ziegler_et_al():
    ctl = AdaptiveKLController(0.2, target=0.1, horizon=10000)
    ctl.update(0.3, n_steps=32)  # KL 3x target: error clipped to +0.2
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 32 / 10000))
    v = ctl.value
    ctl.update(0.09, n_steps=32)  # KL 10% under target: error -0.1
    assert ctl.value == pytest.approx(v * (1 - 0.1 * 32 / 10000))


def test_gae_matches_a_direct_computation(tiny_model_dir):
    engine, *_ = _engine(tiny_model_dir, gamma=0.9, lam=0.8)
    rng = np.random.default_rng(0)
    lengths = [5, 3, 1]
    values = torch.tensor(rng.normal(size=(3, 5)), dtype=torch.float32)
    rewards = torch.tensor(rng.normal(size=(3, 5)), dtype=torch.float32)
    mask = torch.zeros(3, 5)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    adv, ret = engine.compute_advantages(values, rewards, mask)
    raw = []
    for i, n in enumerate(lengths):  # A_t = sum_l (gamma*lam)^l delta_{t+l}, V after the end = 0
        v = values[i, :n].numpy().astype(float)
        r = rewards[i, :n].numpy().astype(float)
        vnext = np.append(v[1:], 0.0)
        delta = r + 0.9 * vnext - v
        a = [sum((0.9 * 0.8) ** l * delta[t + l] for l in range(n - t)) for t in range(n)]
        raw.append(a)
        assert np.allclose(ret[i, :n].numpy(), np.array(a) + v, atol=1e-5)
    flat = np.concatenate(raw)
    whitened = (flat - flat.mean()) / np.sqrt(flat.var(ddof=1) + 1e-8)
    assert np.allclose(adv[mask.bool()].numpy(), whitened, atol=1e-4)
    assert torch.all(adv[~mask.bool()] == 0)


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, tiny_model_dir):
    """A reward model made as the reward stage makes it (a 1-output classifier
    initialised from the causal LM), untrained: the stage test checks the
    plumbing, the algorithm test above checks learning."""
    from recipe_runner_stages.common.models import load_tokenizer, save_model_dir
    from recipe_runner_stages.train.reward import load_reward_base

    out = tmp_path_factory.mktemp("rm")
    tok = load_tokenizer(tiny_model_dir)
    torch.manual_seed(1)
    save_model_dir(load_reward_base(str(tiny_model_dir), tok), tok, out)
    return Artifact(REWARD_MODEL, out)


def test_ppo_stage_reports_and_resumes(tmp_path, tiny_model, reward_model, alpaca_dataset):
    from transformers import AutoModelForCausalLM

    params = {"batch_size": 4, "mini_batch_size": 2, "ppo_epochs": 1, "max_new_tokens": 4, "learning_rate": 1e-3,
              "eval_prompts": 4, "save_steps": 1, "max_prompt_length": 48}
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
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), base.state_dict().values()))

    second = run_stage(PPOStage, {**params, "steps": 3}, inputs=inputs, workdir=tmp_path)
    assert second.metrics["resumed_from_step"] == 2
    assert second.metrics["reward_before"] == m["reward_before"]  # kept from the checkpoint
    assert len((second.outputs["model"].path / "ppo_history.jsonl").read_text().splitlines()) == 3
