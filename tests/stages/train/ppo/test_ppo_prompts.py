"""ppo/prompts.py: where PPO's prompts come from, the held-out split, and the
token budget of a prompt."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from recipe_runner.stage import StageContext, StageError
from recipe_runner_stages.common.prompts import alpaca_prompt
from recipe_runner_stages.train.ppo.params import PPOParams
from recipe_runner_stages.train.ppo.prompts import prompt_token_budget, prompts_of, train_and_held_out_prompts

MakeContext = Callable[..., StageContext[Any]]

HH = "\n\nHuman: Hello?\n\nAssistant: Hi.\n\nHuman: How are you?\n\nAssistant: Fine."


def _dataset(rows: list[dict[str, Any]]) -> Any:
    from datasets import Dataset

    return Dataset.from_list(rows)


def test_prompts_come_from_the_format_the_columns_show() -> None:
    p = PPOParams()
    assert prompts_of(_dataset([{"prompt": "a"}, {"prompt": " "}]), p) == (["a"], "prompt")
    alpaca = _dataset([{"instruction": "Add.", "input": "1 and 2"}])
    assert prompts_of(alpaca, p) == ([alpaca_prompt("Add.", "1 and 2")], "alpaca")
    assert prompts_of(_dataset([{"chosen": HH, "rejected": HH}]), p) == ([HH[: -len(" Fine.")]], "hh")
    assert prompts_of(_dataset([{"text": "t"}]), p) == (["t"], "text")
    with pytest.raises(StageError, match="needs column"):
        prompts_of(_dataset([{"text": "t"}]), PPOParams(prompt_format="alpaca"))
    with pytest.raises(StageError, match="no non-empty prompts"):
        prompts_of(_dataset([{"prompt": ""}]), p)


def test_a_seeded_fifth_of_the_prompts_is_held_out(make_context: MakeContext) -> None:
    from datasets import DatasetDict

    prompts = [f"p{i}" for i in range(20)]
    ctx = make_context(PPOParams(eval_prompts=32), seed=3)
    train, held_out = train_and_held_out_prompts(
        ctx, DatasetDict({"train": _dataset([{"prompt": x} for x in prompts])})
    )
    assert len(held_out) == 4 and sorted(train + held_out) == sorted(prompts)
    again = train_and_held_out_prompts(ctx, DatasetDict({"train": _dataset([{"prompt": x} for x in prompts])}))
    assert again == (train, held_out)
    assert ctx.metrics["train_prompts"] == 16 and ctx.metrics["eval_prompts"] == 4


def test_prompts_are_cut_to_fit_the_context(make_context: MakeContext) -> None:
    ctx = make_context(PPOParams(max_prompt_length=128, max_new_tokens=32))
    assert prompt_token_budget(ctx, None) == 128
    assert prompt_token_budget(ctx, 256) == 128
    assert prompt_token_budget(ctx, 100) == 68
    with pytest.raises(StageError, match="leaves no room for a prompt"):
        prompt_token_budget(ctx, 34)
