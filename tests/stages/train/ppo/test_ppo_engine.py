"""ppo/engine.py: the algorithm raises a learnable reward, and GAE and the
adaptive KL controller match their definitions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import torch

from recipe_runner_stages.train.ppo.engine import mean_reward
from recipe_runner_stages.train.ppo.kl_control import AdaptiveKLController

MakeEngine = Callable[..., tuple[Any, Any, Any]]

PROMPTS = ["I had always thought", "It was not till", "She said that", "The picture was"] * 8


def test_ppo_raises_a_learnable_reward(make_engine: MakeEngine) -> None:
    engine, tok, ref = make_engine()
    ref_state = {k: v.clone() for k, v in ref.state_dict().items()}
    queries = [tok(t, add_special_tokens=False)["input_ids"] for t in PROMPTS]
    favoured = set(range(100))  # reward: share of response tokens with an id below 100

    def reward(qs: Sequence[Sequence[int]], rs: Sequence[Sequence[int]]) -> list[float]:
        return [sum(t in favoured for t in r) / len(r) for r in rs]

    before = mean_reward(engine, queries, reward, seed=123)
    stats = []
    for step in range(8):
        qs = queries[16 * (step % 2) : 16 * (step % 2) + 16]
        rs = engine.generate(qs, generator_seed=step)
        stats.append(engine.step(qs, rs, reward(qs, rs), shuffle_seed=step))
    after = mean_reward(engine, queries, reward, seed=123)
    assert after > before + 0.1, (before, after)
    assert stats[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # first rollout: policy == reference
    assert stats[-1]["kl"] > 0.05  # the policy moved away from the reference, and the KL term saw it
    assert stats[-1]["vf_loss"] < stats[0]["vf_loss"]  # the value head learns the returns
    assert all(torch.equal(v, ref_state[k]) for k, v in ref.state_dict().items())  # the reference stays frozen


def test_adaptive_kl_controller_follows_ziegler_et_al() -> None:
    ctl = AdaptiveKLController(0.2, target=0.1, horizon=10000)
    ctl.update(0.3, n_steps=32)  # KL 3x target: error clipped to +0.2
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 32 / 10000))
    v = ctl.value
    ctl.update(0.09, n_steps=32)  # KL 10% under target: error -0.1
    assert ctl.value == pytest.approx(v * (1 - 0.1 * 32 / 10000))


def test_gae_matches_a_direct_computation(make_engine: MakeEngine) -> None:
    engine, *_ = make_engine(gamma=0.9, lam=0.8)
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
        a = [sum((0.9 * 0.8) ** lag * delta[t + lag] for lag in range(n - t)) for t in range(n)]
        raw.append(a)
        assert np.allclose(ret[i, :n].numpy(), np.array(a) + v, atol=1e-5)
    flat = np.concatenate(raw)
    whitened = (flat - flat.mean()) / np.sqrt(flat.var(ddof=1) + 1e-8)
    assert np.allclose(adv[mask.bool()].numpy(), whitened, atol=1e-4)
    assert torch.all(adv[~mask.bool()] == 0)
