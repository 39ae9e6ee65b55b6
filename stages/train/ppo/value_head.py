"""The PPO policy: a causal LM (optionally a peft model) with a scalar value
head on its last hidden state."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ValueHead(nn.Module):
    """hidden state -> scalar value, per token."""

    def __init__(self, hidden_size: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.summary = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.summary(self.dropout(hidden.to(self.summary.weight.dtype))).squeeze(-1)
        return out


class PolicyWithValueHead(nn.Module):
    """A causal LM (optionally a peft model) plus a scalar value head."""

    def __init__(self, lm: Any):
        super().__init__()
        self.lm: Any = lm  # a transformers causal LM or a peft model around one
        hidden = lm.config.get_text_config().hidden_size
        self.v_head = ValueHead(hidden)
        dev = next(lm.parameters()).device
        self.v_head.to(dev)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=True,
            use_cache=False,
        )
        return out.logits, self.v_head(out.hidden_states[-1])
