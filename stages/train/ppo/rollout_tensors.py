"""Token-level tensors of PPO rollouts: queries and responses padded into one
batch, the log-probabilities of the response tokens, and statistics over the
response tokens only (masked mean, variance, whitening)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The unbiased variance of the masked entries."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    return var * n / (n - 1) if n > 1 else var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Zero mean (unless not ``shift_mean``: the mean is kept), unit variance over the masked entries."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def pad_batch(
    queries: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Left-padded queries + right-padded responses in one tensor.
    Returns input_ids, attention_mask, position_ids, response_mask, Lq."""
    lq = max(len(q) for q in queries)
    lr = max(len(r) for r in responses)
    b = len(queries)
    ids = torch.full((b, lq + lr), pad_id, dtype=torch.long)
    mask = torch.zeros((b, lq + lr), dtype=torch.long)
    rmask = torch.zeros((b, lr), dtype=torch.float32)
    for i, (q, r) in enumerate(zip(queries, responses, strict=True)):
        ids[i, lq - len(q) : lq] = torch.as_tensor(list(q), dtype=torch.long)
        ids[i, lq : lq + len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, lq - len(q) : lq + len(r)] = 1
        rmask[i, : len(r)] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device), rmask.to(device), lq


def response_logprobs(logits: torch.Tensor, ids: torch.Tensor, lq: int, temperature: float = 1.0) -> torch.Tensor:
    """log pi(token) of the response tokens (columns lq..): logits at t-1 predict token t."""
    lg = logits[:, lq - 1 : -1, :].float()
    if temperature != 1.0:
        lg = lg / temperature
    return torch.log_softmax(lg, dim=-1).gather(-1, ids[:, lq:].unsqueeze(-1)).squeeze(-1)


def pad_columns(t: torch.Tensor, width: int) -> torch.Tensor:
    """``t`` right-padded with zeros to ``width`` columns."""
    return torch.nn.functional.pad(t, (0, width - t.shape[1]))
