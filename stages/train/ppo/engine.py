"""A compact, faithful PPO for language models (RLHF), after trl's classic
``PPOTrainer`` (trl <= 0.11, removed from trl in 1.x) and Ziegler et al.
2019, "Fine-Tuning Language Models from Human Preferences":

- the policy is a causal LM with a scalar value head on its last hidden state;
- rollouts: sample a response per prompt, score prompt+response with a reward
  function (the reward model), and compute per-token rewards
  ``r_t = -beta * (log pi(a_t) - log pi_ref(a_t))`` plus the score on the last
  response token (KL penalty to the frozen reference);
- advantages by GAE (gamma, lambda) over the response tokens, whitened;
- ``ppo_epochs`` passes over shuffled mini-batches minimising the clipped
  policy loss and the clipped value loss (``vf_coef`` weighted);
- the KL coefficient beta follows the adaptive controller of Ziegler et al.
  (``AdaptiveKLController``: beta *= 1 + clip(KL/target - 1, +-0.2) * n/horizon).

Everything works on token-id lists, so any reward function can drive it
(tests use a synthetic one); the ``ppo`` stage plugs in a reward model.  The
engine reads its settings from the stage's :class:`~.params.PPOParams`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ...common.generation import GenerationSettings, SpecialTokens, generate_ids
from .kl_control import AdaptiveKLController, FixedKLController, KLController
from .params import PPOParams
from .rollout_tensors import masked_mean, masked_whiten, pad_batch, pad_columns, response_logprobs
from .value_head import PolicyWithValueHead

#: every rollout response has at least one new token
MIN_NEW_TOKENS = 1
#: the policy's AdamW runs without weight decay (trl's classic PPO)
WEIGHT_DECAY = 0.0

Queries = Sequence[Sequence[int]]
RewardFn = Callable[[Queries, Queries], Sequence[float]]


@dataclass
class Rollouts:
    """One PPO batch: the token ids and, per response token, the old
    log-probs and values, the advantages and the returns."""

    queries: Queries
    responses: Queries
    old_logp: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


class PPOEngine:
    """Holds the policy (+ value head), the reference, the optimizer and the
    KL controller; ``generate`` makes rollouts, ``step`` runs one PPO
    iteration on a batch of (query, response, score)."""

    def __init__(
        self,
        policy: PolicyWithValueHead,
        ref_model: nn.Module | None,
        tokenizer: Any,
        cfg: PPOParams,
        autocast_dtype: torch.dtype | None = None,
    ):
        self.policy, self.ref, self.tok, self.cfg = policy, ref_model, tokenizer, cfg
        self.device = next(policy.parameters()).device
        self.autocast_dtype = autocast_dtype
        self.trainable = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=cfg.learning_rate, weight_decay=WEIGHT_DECAY)
        self.kl_ctl: KLController = (
            AdaptiveKLController(cfg.init_kl_coef, cfg.target_kl, cfg.horizon)
            if cfg.adap_kl_ctrl
            else FixedKLController(cfg.init_kl_coef)
        )
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        # deterministic log-probs: PPO's ratio must be exactly 1 before the first update
        policy.eval()
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def generate(self, queries: Queries, generator_seed: int | None = None, do_sample: bool = True) -> list[list[int]]:
        """Sample one response per query (token ids, cut after the first EOS)."""
        cfg = self.cfg
        settings = GenerationSettings(
            max_new_tokens=cfg.max_new_tokens,
            min_new_tokens=MIN_NEW_TOKENS,
            do_sample=do_sample,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
        )
        special = SpecialTokens(pad=self.pad_id, eos=self.eos_id)
        with self._autocast():
            rows = generate_ids(
                self.policy.lm, queries, settings, special, batch_size=cfg.forward_batch_size, seed=generator_seed
            )
        return [self._response(row) for row in rows]

    def _response(self, row: list[int]) -> list[int]:
        """A generated row up to and including its first EOS (or up to the padding)."""
        if self.eos_id is not None and self.eos_id in row:
            row = row[: row.index(self.eos_id) + 1]
        elif self.pad_id in row and self.pad_id != self.eos_id:
            row = row[: row.index(self.pad_id)] or row[:1]
        return row or [self.eos_id]

    @torch.no_grad()
    def _rollout_stats(
        self, queries: Queries, responses: Queries
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Old log-probs, reference log-probs and values of a batch, and its response mask."""
        size = self.cfg.forward_batch_size
        logp, ref_logp, values, masks = [], [], [], []
        width = max(len(r) for r in responses)
        for i in range(0, len(queries), size):
            lp, rlp, val, rmask = self._chunk_stats(queries[i : i + size], responses[i : i + size])
            logp.append(pad_columns(lp * rmask, width))
            ref_logp.append(pad_columns(rlp * rmask, width))
            values.append(pad_columns(val * rmask, width))
            masks.append(pad_columns(rmask, width))
        return torch.cat(logp), torch.cat(ref_logp), torch.cat(values), torch.cat(masks)

    def _chunk_stats(
        self, queries: Queries, responses: Queries
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Policy log-probs, reference log-probs, values and response mask of one forward batch."""
        ids, mask, pos, rmask, lq = pad_batch(queries, responses, self.pad_id, self.device)
        with self._autocast():
            logits, v = self.policy(ids, mask, pos)
            lp = response_logprobs(logits, ids, lq, self.cfg.temperature)
            rlp = response_logprobs(self._reference_logits(ids, mask, pos), ids, lq, self.cfg.temperature)
        return lp, rlp, v[:, lq - 1 : -1].float(), rmask

    def _reference_logits(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """The frozen reference's logits; for a peft policy the reference is
        the base with the adapter disabled."""
        if self.ref is not None:
            logits: torch.Tensor = self.ref(
                input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False
            ).logits
            return logits
        with self.policy.lm.disable_adapter():
            logits = self.policy.lm(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
        return logits

    def compute_rewards(
        self, scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-token rewards, their KL-penalty part, per-token KL): the score
        is added on each response's last token."""
        kl = (logp - ref_logp) * mask
        non_score = -self.kl_ctl.value * kl
        rewards = non_score.clone()
        last = (mask.sum(1).long() - 1).clamp(min=0)
        rewards[torch.arange(len(scores)), last] += scores
        return rewards, non_score, kl

    def compute_advantages(
        self, values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(whitened GAE advantages, returns) over the response tokens."""
        cfg = self.cfg
        values, rewards = values * mask, rewards * mask
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
        lastgaelam = torch.zeros(values.shape[0], device=values.device)
        adv_rev = []
        n = rewards.shape[1]
        for t in reversed(range(n)):
            nextvalues = values[:, t + 1] if t < n - 1 else torch.zeros_like(lastgaelam)
            delta = rewards[:, t] + cfg.gamma * nextvalues - values[:, t]
            lastgaelam = delta + cfg.gamma * cfg.lam * lastgaelam
            adv_rev.append(lastgaelam)
        advantages = torch.stack(adv_rev[::-1], dim=1)
        returns = advantages + values
        advantages = masked_whiten(advantages, mask) * mask
        return advantages.detach(), returns.detach()

    def _loss(
        self,
        old_logp: torch.Tensor,
        old_values: torch.Tensor,
        logp: torch.Tensor,
        vpred: torch.Tensor,
        mask: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The clipped policy loss plus the weighted clipped value loss, and their statistics."""
        cfg = self.cfg
        vpredclipped = torch.max(torch.min(vpred, old_values + cfg.cliprange_value), old_values - cfg.cliprange_value)
        vf_losses1 = (vpred - returns) ** 2
        vf_losses2 = (vpredclipped - returns) ** 2
        vf_loss = 0.5 * masked_mean(torch.max(vf_losses1, vf_losses2), mask)
        vf_clipfrac = masked_mean((vf_losses2 > vf_losses1).float(), mask)
        ratio = torch.exp(logp - old_logp)
        pg_losses = -advantages * ratio
        pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - cfg.cliprange, 1.0 + cfg.cliprange)
        pg_loss = masked_mean(torch.max(pg_losses, pg_losses2), mask)
        pg_clipfrac = masked_mean((pg_losses2 > pg_losses).float(), mask)
        approxkl = 0.5 * masked_mean((logp - old_logp) ** 2, mask)
        avg_ratio = masked_mean(ratio, mask)
        loss = pg_loss + cfg.vf_coef * vf_loss
        if avg_ratio.item() > cfg.ratio_threshold:  # skip a mini-batch whose ratio exploded (trl does the same)
            loss = loss * 0.0
        stats = {
            "pg_loss": pg_loss.item(),
            "vf_loss": vf_loss.item(),
            "pg_clipfrac": pg_clipfrac.item(),
            "vf_clipfrac": vf_clipfrac.item(),
            "approxkl": approxkl.item(),
            "ratio": avg_ratio.item(),
        }
        return loss, stats

    def step(
        self, queries: Queries, responses: Queries, scores: Sequence[float], shuffle_seed: int = 0
    ) -> dict[str, float]:
        """One PPO iteration on a batch of rollouts and their scores; returns its statistics."""
        scores_t = torch.as_tensor(list(scores), dtype=torch.float32, device=self.device)
        if self.cfg.score_clip is not None:
            scores_t = scores_t.clamp(-self.cfg.score_clip, self.cfg.score_clip)
        old_logp, ref_logp, old_values, mask = self._rollout_stats(queries, responses)
        rewards, non_score, kl = self.compute_rewards(scores_t, old_logp, ref_logp, mask)
        advantages, returns = self.compute_advantages(old_values, rewards, mask)
        rollouts = Rollouts(queries, responses, old_logp, old_values, advantages, returns)
        logs, stopped = self._optimise(rollouts, shuffle_seed)

        b = len(queries)
        mean_kl = kl.sum(1).mean().item()
        kl_coef = self.kl_ctl.value
        self.kl_ctl.update(mean_kl, b)
        stats = {k: float(np.mean([s[k] for s in logs])) for k in logs[0]} if logs else {}
        stats.update(
            score_mean=float(scores_t.mean().item()),
            score_std=float(scores_t.std().item()) if b > 1 else 0.0,
            kl=mean_kl,
            kl_coef=kl_coef,
            kl_coef_next=self.kl_ctl.value,
            non_score_reward=float(non_score.sum(1).mean().item()),
            response_length=float(mask.sum(1).mean().item()),
            early_stopped=float(stopped),
        )
        return stats

    def _optimise(self, rollouts: Rollouts, shuffle_seed: int) -> tuple[list[dict[str, float]], bool]:
        """``ppo_epochs`` passes over shuffled mini-batches: (their statistics,
        whether the approximate KL stopped them early)."""
        gen = torch.Generator().manual_seed(shuffle_seed)
        logs: list[dict[str, float]] = []
        for _epoch in range(self.cfg.ppo_epochs):
            perm = torch.randperm(len(rollouts.queries), generator=gen).tolist()
            if self._epoch(rollouts, perm, logs):
                return logs, True
        return logs, False

    def _epoch(self, rollouts: Rollouts, perm: list[int], logs: list[dict[str, float]]) -> bool:
        """One pass over the mini-batches in ``perm`` order, an optimizer step
        every ``gradient_accumulation_steps``; True when stopped early."""
        cfg = self.cfg
        b, mbs = len(perm), cfg.mini_batch_size
        acc = max(1, cfg.gradient_accumulation_steps)
        self.optimizer.zero_grad(set_to_none=True)
        for n_micro, start in enumerate(range(0, b, mbs), start=1):
            st = self._minibatch_backward(rollouts, perm[start : start + mbs], acc)
            logs.append(st)
            if n_micro % acc == 0 or start + mbs >= b:
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(self.trainable, cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            if cfg.early_stop_kl is not None and st["approxkl"] > 1.5 * cfg.early_stop_kl:
                return True
        return False

    def _minibatch_backward(self, rollouts: Rollouts, idx: list[int], acc: int) -> dict[str, float]:
        """Forward the mini-batch ``idx`` and backpropagate its loss (divided by ``acc``)."""
        q = [rollouts.queries[i] for i in idx]
        r = [rollouts.responses[i] for i in idx]
        ids, amask, pos, rmask, lq = pad_batch(q, r, self.pad_id, self.device)
        lr = rmask.shape[1]
        sel = torch.as_tensor(idx, device=self.device)
        with self._autocast():
            logits, v = self.policy(ids, amask, pos)
            logp = response_logprobs(logits, ids, lq, self.cfg.temperature)
        vpred = v[:, lq - 1 : -1].float()
        loss, st = self._loss(
            rollouts.old_logp[sel, :lr],
            rollouts.old_values[sel, :lr],
            logp,
            vpred,
            rmask,
            rollouts.advantages[sel, :lr],
            rollouts.returns[sel, :lr],
        )
        (loss / acc).backward()
        return st

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.policy.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict[str, Any]:
        return {
            "trainable": self.trainable_state(),
            "optimizer": self.optimizer.state_dict(),
            "kl_coef": self.kl_ctl.value,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        named = dict(self.policy.named_parameters())
        with torch.no_grad():
            for n, t in state["trainable"].items():
                named[n].copy_(t.to(named[n].device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_ctl.value = state["kl_coef"]


def mean_reward(engine: PPOEngine, queries: Queries, reward_fn: RewardFn, seed: int) -> float:
    """Mean reward of sampled responses to fixed prompts (same seed before and after training)."""
    responses = engine.generate(queries, generator_seed=seed)
    scores = reward_fn(queries, responses)
    return float(sum(scores) / max(1, len(scores))) if len(scores) else math.nan
