"""What each PPO iteration rolls out: batches of prompts drawn in a seeded
order that a resumed run replays exactly, and the reward model's scores of
prompt + response."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from ..reward.scoring import score_texts


class PromptOrder:
    """The training prompts in epochs of seeded permutations; ``batch(step)``
    is the same for a given step whether or not the run resumed before it."""

    def __init__(self, prompts: list[list[int]], batch_size: int, seed: int):
        self.prompts, self.batch_size = prompts, batch_size
        self._rng = random.Random(seed)
        self._order: list[int] = []

    def batch(self, step: int) -> list[list[int]]:
        while len(self._order) < (step + 1) * self.batch_size:
            perm = list(range(len(self.prompts)))
            self._rng.shuffle(perm)
            self._order.extend(perm)
        return [self.prompts[i] for i in self._order[step * self.batch_size : (step + 1) * self.batch_size]]


class RewardModelScorer:
    """The reward function of the rollouts: the policy's tokens decoded to
    text (prompt + response) and scored by a reward model with its own
    tokenizer."""

    def __init__(self, policy_tokenizer: Any, reward_model: Any, reward_tokenizer: Any, batch_size: int):
        self.tok, self.model, self.model_tok, self.batch_size = (
            policy_tokenizer,
            reward_model,
            reward_tokenizer,
            batch_size,
        )

    def __call__(self, queries: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> list[float]:
        texts = [
            self.tok.decode(list(q) + list(r), skip_special_tokens=True)
            for q, r in zip(queries, responses, strict=True)
        ]
        return score_texts(self.model, self.model_tok, texts, batch_size=self.batch_size)
