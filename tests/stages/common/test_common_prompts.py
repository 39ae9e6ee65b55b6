"""common/prompts.py: the standard Alpaca templates and one user turn through
a chat template."""

from __future__ import annotations

from typing import Any

from recipe_runner_stages.common.prompts import (
    ALPACA_PROMPT_INPUT,
    ALPACA_PROMPT_NO_INPUT,
    alpaca_prompt,
    alpaca_prompts_batch,
    chat_prompt,
)

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_alpaca_templates_are_the_standard_ones() -> None:
    assert alpaca_prompt("Do X.", "") == ALPACA_PROMPT_NO_INPUT.format(instruction="Do X.")
    assert alpaca_prompt("Do X.", "ctx").startswith(
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nDo X.\n\n### Input:\nctx"
    )
    assert ALPACA_PROMPT_INPUT.endswith("### Response:\n") and ALPACA_PROMPT_NO_INPUT.endswith("### Response:\n")


def test_a_blank_input_is_no_input() -> None:
    assert alpaca_prompt("Do X.", "   ") == alpaca_prompt("Do X.", None) == alpaca_prompt("Do X.", "")


def test_alpaca_prompts_of_a_batch_with_and_without_an_input_column() -> None:
    batch = {"instruction": ["Add 2 and 3.", "Name a colour."], "input": ["", "warm"]}
    assert alpaca_prompts_batch(batch) == [alpaca_prompt("Add 2 and 3.", ""), alpaca_prompt("Name a colour.", "warm")]
    assert alpaca_prompts_batch({"instruction": ["Add 2 and 3."]}) == [
        ALPACA_PROMPT_NO_INPUT.format(instruction="Add 2 and 3.")
    ]
    renamed = {"q": ["Add 2 and 3."], "ctx": ["numbers"]}
    assert alpaca_prompts_batch(renamed, instruction_col="q", input_col="ctx") == [
        alpaca_prompt("Add 2 and 3.", "numbers")
    ]


def test_chat_prompt_renders_a_user_turn_and_the_assistant_prompt(tiny_tokenizer: Any) -> None:
    tiny_tokenizer.chat_template = CHATML
    try:
        assert chat_prompt(tiny_tokenizer, "Hi") == "<|im_start|>user\nHi<|im_end|></s>\n<|im_start|>assistant\n"
        turns = [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"},
        ]
        assert chat_prompt(tiny_tokenizer, turns) == (
            "<|im_start|>user\nHi<|im_end|></s>\n<|im_start|>assistant\nHello<|im_end|></s>\n"
            "<|im_start|>user\nBye<|im_end|></s>\n<|im_start|>assistant\n"
        )
    finally:
        tiny_tokenizer.chat_template = None
