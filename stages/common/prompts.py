"""Prompt formats shared by the stage families: the standard Alpaca
instruction templates (fine-tuning data, PPO prompts and the judge's
prompting of the evaluated models use the same text) and one user turn
rendered with a tokenizer's chat template."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# The standard Alpaca prompt templates (tatsu-lab/stanford_alpaca, train.py).
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def alpaca_prompt(instruction: str, input_text: str | None) -> str:
    """The Alpaca prompt of an instruction, with its input section when the input is not blank."""
    if input_text and str(input_text).strip():
        return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=input_text)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def alpaca_prompts_batch(
    batch: dict[str, list[Any]], instruction_col: str = "instruction", input_col: str = "input"
) -> list[str]:
    """Alpaca prompts of a batch of records (columns as lists; the input column is optional)."""
    inputs: Sequence[Any] = batch.get(input_col) or [None] * len(batch[instruction_col])
    return [alpaca_prompt(i, x) for i, x in zip(batch[instruction_col], inputs, strict=True)]


def chat_prompt(tokenizer: Any, messages: str | list[dict[str, Any]]) -> str:
    """``messages`` (or one user turn of text) rendered with the tokenizer's
    chat template, ending with the prompt for the assistant's reply."""
    turns = [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
    text: str = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return text
