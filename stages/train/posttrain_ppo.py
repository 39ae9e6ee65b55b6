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
(tests use a synthetic one); the ``ppo`` stage plugs in a reward model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..common.generation import GenerationSettings, SpecialTokens, generate_ids


@dataclass
class PPOSettings:
    learning_rate: float = 1.41e-5
    batch_size: int = 32
    mini_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    ppo_epochs: int = 4
    init_kl_coef: float = 0.2
    adap_kl_ctrl: bool = True
    target_kl: float = 0.1
    horizon: float = 10000.0
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    max_grad_norm: float | None = 1.0
    whiten_rewards: bool = False
    ratio_threshold: float = 10.0
    score_clip: float | None = None
    early_stop_kl: float | None = None
    max_new_tokens: int = 32
    min_new_tokens: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    forward_batch_size: int = 16
    weight_decay: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class AdaptiveKLController:
    """Adaptive KL controller of Ziegler et al. 2019 (as in trl's classic PPO)."""

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current: float, n_steps: int) -> None:
        proportional_error = float(np.clip(current / self.target - 1, -0.2, 0.2))
        self.value *= 1 + proportional_error * n_steps / self.horizon


class FixedKLController:
    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current: float, n_steps: int) -> None:
        pass


class ValueHead(nn.Module):
    def __init__(self, hidden_size: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.summary = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(self.dropout(hidden.to(self.summary.weight.dtype))).squeeze(-1)


class PolicyWithValueHead(nn.Module):
    """A causal LM (optionally a peft model) plus a scalar value head."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        hidden = lm.config.get_text_config().hidden_size
        self.v_head = ValueHead(hidden)
        dev = next(lm.parameters()).device
        self.v_head.to(dev)

    def forward(self, input_ids, attention_mask, position_ids):
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      output_hidden_states=True, use_cache=False)
        return out.logits, self.v_head(out.hidden_states[-1])


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    return var * n / (n - 1) if n > 1 else var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def pad_batch(queries: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int,
              device: torch.device):
    """Left-padded queries + right-padded responses in one tensor.
    Returns input_ids, attention_mask, position_ids, response_mask, Lq."""
    lq = max(len(q) for q in queries)
    lr = max(len(r) for r in responses)
    b = len(queries)
    ids = torch.full((b, lq + lr), pad_id, dtype=torch.long)
    mask = torch.zeros((b, lq + lr), dtype=torch.long)
    rmask = torch.zeros((b, lr), dtype=torch.float32)
    for i, (q, r) in enumerate(zip(queries, responses)):
        ids[i, lq - len(q):lq] = torch.as_tensor(list(q), dtype=torch.long)
        ids[i, lq:lq + len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, lq - len(q):lq + len(r)] = 1
        rmask[i, :len(r)] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device), rmask.to(device), lq


def response_logprobs(logits: torch.Tensor, ids: torch.Tensor, lq: int, temperature: float = 1.0) -> torch.Tensor:
    """log pi(token) of the response tokens (columns lq..): logits at t-1 predict token t."""
    lg = logits[:, lq - 1:-1, :].float()
    if temperature != 1.0:
        lg = lg / temperature
    return torch.log_softmax(lg, dim=-1).gather(-1, ids[:, lq:].unsqueeze(-1)).squeeze(-1)


class PPOEngine:
    """Holds the policy (+ value head), the reference, the optimizer and the
    KL controller; ``generate`` makes rollouts, ``step`` runs one PPO
    iteration on a batch of (query, response, score)."""

    def __init__(self, policy: PolicyWithValueHead, ref_model: nn.Module | None, tokenizer: Any,
                 cfg: PPOSettings, autocast_dtype: torch.dtype | None = None):
        self.policy, self.ref, self.tok, self.cfg = policy, ref_model, tokenizer, cfg
        self.device = next(policy.parameters()).device
        self.autocast_dtype = autocast_dtype
        params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.kl_ctl = (AdaptiveKLController(cfg.init_kl_coef, cfg.target_kl, cfg.horizon) if cfg.adap_kl_ctrl
                       else FixedKLController(cfg.init_kl_coef))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        # deterministic log-probs: PPO's ratio must be exactly 1 before the first update
        policy.eval()
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)

    # -------------------------------------------------------------- helpers

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def generate(self, queries: Sequence[Sequence[int]], generator_seed: int | None = None,
                 do_sample: bool = True) -> list[list[int]]:
        """Sample one response per query (token ids, cut after the first EOS)."""
        cfg = self.cfg
        settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens,
                                      do_sample=do_sample, temperature=cfg.temperature, top_k=cfg.top_k,
                                      top_p=cfg.top_p)
        with self._autocast():
            rows = generate_ids(self.policy.lm, queries, settings, SpecialTokens(pad=self.pad_id, eos=self.eos_id),
                                batch_size=cfg.forward_batch_size, seed=generator_seed)
        return [self._response(row) for row in rows]

    def _response(self, row: list[int]) -> list[int]:
        """A generated row up to and including its first EOS (or up to the padding)."""
        if self.eos_id is not None and self.eos_id in row:
            row = row[: row.index(self.eos_id) + 1]
        elif self.pad_id in row and self.pad_id != self.eos_id:
            row = row[: row.index(self.pad_id)] or row[:1]
        return row or [self.eos_id]

    @torch.no_grad()
    def _rollout_stats(self, queries, responses):
        """Old log-probs, reference log-probs and values of a batch."""
        cfg = self.cfg
        logp, ref_logp, values, masks = [], [], [], []
        lr_max = max(len(r) for r in responses)
        for i in range(0, len(queries), cfg.forward_batch_size):
            q, r = queries[i:i + cfg.forward_batch_size], responses[i:i + cfg.forward_batch_size]
            ids, mask, pos, rmask, lq = pad_batch(q, r, self.pad_id, self.device)
            with self._autocast():
                logits, v = self.policy(ids, mask, pos)
                lp = response_logprobs(logits, ids, lq, cfg.temperature)
                if self.ref is not None:
                    rlogits = self.ref(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
                else:  # peft policy: the reference is the base with the adapter disabled
                    with self.policy.lm.disable_adapter():
                        rlogits = self.policy.lm(input_ids=ids, attention_mask=mask, position_ids=pos,
                                                 use_cache=False).logits
                rlp = response_logprobs(rlogits, ids, lq, cfg.temperature)
            val = v[:, lq - 1:-1].float()
            pad = lr_max - rmask.shape[1]
            f = lambda t: torch.nn.functional.pad(t, (0, pad))  # noqa: E731
            logp.append(f(lp * rmask)), ref_logp.append(f(rlp * rmask)), values.append(f(val * rmask))
            masks.append(f(rmask))
        return torch.cat(logp), torch.cat(ref_logp), torch.cat(values), torch.cat(masks)

    def compute_rewards(self, scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor,
                        mask: torch.Tensor):
        kl = (logp - ref_logp) * mask
        non_score = -self.kl_ctl.value * kl
        rewards = non_score.clone()
        last = (mask.sum(1).long() - 1).clamp(min=0)
        rewards[torch.arange(len(scores)), last] += scores
        return rewards, non_score, kl

    def compute_advantages(self, values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor):
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

    def _loss(self, old_logp, old_values, logp, vpred, mask, advantages, returns):
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
        return loss, dict(pg_loss=pg_loss.item(), vf_loss=vf_loss.item(), pg_clipfrac=pg_clipfrac.item(),
                          vf_clipfrac=vf_clipfrac.item(), approxkl=approxkl.item(), ratio=avg_ratio.item())

    # -------------------------------------------------------------- step

    def step(self, queries: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
             scores: Sequence[float], shuffle_seed: int = 0) -> dict[str, float]:
        cfg = self.cfg
        b = len(queries)
        scores_t = torch.as_tensor(list(scores), dtype=torch.float32, device=self.device)
        if cfg.score_clip is not None:
            scores_t = scores_t.clamp(-cfg.score_clip, cfg.score_clip)
        old_logp, ref_logp, old_values, mask = self._rollout_stats(queries, responses)
        rewards, non_score, kl = self.compute_rewards(scores_t, old_logp, ref_logp, mask)
        advantages, returns = self.compute_advantages(old_values, rewards, mask)

        gen = torch.Generator().manual_seed(shuffle_seed)
        mbs = cfg.mini_batch_size
        acc = max(1, cfg.gradient_accumulation_steps)
        logs: list[dict[str, float]] = []
        stop = False
        params = [p for p in self.policy.parameters() if p.requires_grad]
        for _epoch in range(cfg.ppo_epochs):
            perm = torch.randperm(b, generator=gen).tolist()
            self.optimizer.zero_grad(set_to_none=True)
            n_micro = 0
            for start in range(0, b, mbs):
                idx = perm[start:start + mbs]
                q = [queries[i] for i in idx]
                r = [responses[i] for i in idx]
                ids, amask, pos, rmask, lq = pad_batch(q, r, self.pad_id, self.device)
                lr = rmask.shape[1]
                sel = torch.as_tensor(idx, device=self.device)
                with self._autocast():
                    logits, v = self.policy(ids, amask, pos)
                    logp = response_logprobs(logits, ids, lq, cfg.temperature)
                vpred = v[:, lq - 1:-1].float()
                loss, st = self._loss(old_logp[sel, :lr], old_values[sel, :lr], logp, vpred, rmask,
                                      advantages[sel, :lr], returns[sel, :lr])
                (loss / acc).backward()
                logs.append(st)
                n_micro += 1
                if n_micro % acc == 0 or start + mbs >= b:
                    if cfg.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                if cfg.early_stop_kl is not None and st["approxkl"] > 1.5 * cfg.early_stop_kl:
                    stop = True
                    break
            if stop:
                break

        mean_kl = kl.sum(1).mean().item()
        kl_coef = self.kl_ctl.value
        self.kl_ctl.update(mean_kl, b)
        stats = {k: float(np.mean([s[k] for s in logs])) for k in logs[0]} if logs else {}
        stats.update(
            score_mean=float(scores_t.mean().item()), score_std=float(scores_t.std().item()) if b > 1 else 0.0,
            kl=mean_kl, kl_coef=kl_coef, kl_coef_next=self.kl_ctl.value,
            non_score_reward=float(non_score.sum(1).mean().item()),
            response_length=float(mask.sum(1).mean().item()), early_stopped=float(stop),
        )
        return stats

    # -------------------------------------------------------------- state

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.policy.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict[str, Any]:
        return {"trainable": self.trainable_state(), "optimizer": self.optimizer.state_dict(),
                "kl_coef": self.kl_ctl.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        named = dict(self.policy.named_parameters())
        with torch.no_grad():
            for n, t in state["trainable"].items():
                named[n].copy_(t.to(named[n].device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_ctl.value = state["kl_coef"]


def mean_reward(engine: PPOEngine, queries: Sequence[Sequence[int]],
                reward_fn: Callable[[Sequence[Sequence[int]], Sequence[Sequence[int]]], Sequence[float]],
                seed: int) -> float:
    """Mean reward of sampled responses to fixed prompts (same seed before and after training)."""
    responses = engine.generate(queries, generator_seed=seed)
    scores = reward_fn(queries, responses)
    return float(sum(scores) / max(1, len(scores))) if len(scores) else math.nan
