"""The prompts PPO samples responses to: read from a 'prompt' column, Alpaca
records (the standard template), hh-rlhf dialogues (up to the last
"\\n\\nAssistant:") or a text column; split into training and held-out
prompts; encoded as token ids cut to fit the model's context."""

from __future__ import annotations

import random
from typing import Any

from recipe_runner import StageContext, StageError

from ...common.prompts import alpaca_prompts_batch
from ..preference.hh_rlhf import split_hh
from .params import PPOParams


def detect_prompt_format(cols: list[str], p: PPOParams) -> str:
    """The recipe's prompt_format, or (auto) the first one whose column the data has."""
    if p.prompt_format != "auto":
        return p.prompt_format
    if p.prompt_column in cols:
        return "prompt"
    if "instruction" in cols:
        return "alpaca"
    if "chosen" in cols:
        return "hh"
    if p.text_column in cols:
        return "text"
    raise StageError(
        f"input 'dataset': no prompts found in columns {cols}; expected {p.prompt_column!r}, "
        f"'instruction' (Alpaca), 'chosen' (hh-rlhf) or {p.text_column!r}; or set prompt_format"
    )


def prompts_of(ds: Any, p: PPOParams) -> tuple[list[str], str]:
    """(the non-empty prompts of a split, the prompt format they were read in)."""
    cols = ds.column_names
    fmt = detect_prompt_format(cols, p)
    need = {"prompt": [p.prompt_column], "alpaca": ["instruction"], "hh": ["chosen"], "text": [p.text_column]}[fmt]
    missing = [c for c in need if c not in cols]
    if missing:
        raise StageError(f"input 'dataset': prompt_format {fmt!r} needs column(s) {missing}; found {cols}")
    prompts = [x for x in _read_prompts(ds, fmt, p) if x.strip()]
    if not prompts:
        raise StageError("input 'dataset': no non-empty prompts")
    return prompts, fmt


def _read_prompts(ds: Any, fmt: str, p: PPOParams) -> list[str]:
    if fmt == "prompt":
        return [str(x) for x in ds[p.prompt_column]]
    if fmt == "alpaca":
        records = {"instruction": ds["instruction"]}
        if "input" in ds.column_names:
            records["input"] = ds["input"]
        return alpaca_prompts_batch(records)
    if fmt == "hh":
        return [parts[0] for parts in map(split_hh, ds["chosen"]) if parts is not None]
    return [str(x) for x in ds[p.text_column]]


def train_and_held_out_prompts(ctx: StageContext[PPOParams], dsd: Any) -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts for the reward before and after):
    the 'validation' split's first ``eval_prompts``, else a seeded share of
    the train prompts (a fifth, at most eval_prompts)."""
    p = ctx.params
    train_prompts, fmt = prompts_of(dsd["train"], p)
    if "validation" in dsd:
        eval_prompts = prompts_of(dsd["validation"], p)[0][: p.eval_prompts]
    else:
        order = list(range(len(train_prompts)))
        random.Random(ctx.seed).shuffle(order)
        n_eval = min(p.eval_prompts, max(1, len(order) // 5))
        eval_prompts = [train_prompts[i] for i in order[:n_eval]]
        train_prompts = [train_prompts[i] for i in order[n_eval:]] or eval_prompts
    ctx.metrics.update(prompt_format=fmt, train_prompts=len(train_prompts), eval_prompts=len(eval_prompts))
    return train_prompts, eval_prompts


def prompt_token_budget(ctx: StageContext[PPOParams], max_positions: int | None) -> int:
    """How many prompt tokens a rollout keeps: max_prompt_length, less where
    prompt and response would not fit the model's context."""
    p = ctx.params
    max_prompt = p.max_prompt_length
    if max_positions and max_prompt + p.max_new_tokens > max_positions:
        max_prompt = max_positions - p.max_new_tokens
        if max_prompt < 4:
            raise StageError(
                f"max_new_tokens={p.max_new_tokens} leaves no room for a prompt in the model's "
                f"context of {max_positions} tokens"
            )
        ctx.log.warning("prompts cut to %d tokens to fit the model's context (%d)", max_prompt, max_positions)
    return max_prompt


def encode_prompts(tok: Any, texts: list[str], max_tokens: int) -> list[list[int]]:
    """Token ids of the prompts (no special tokens), each cut to its last
    ``max_tokens``; prompts without a token are dropped."""
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    return [x[-max_tokens:] for x in ids if x]
