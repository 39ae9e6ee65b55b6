"""The judge's prompts (score and compare) and how the evaluated models are
prompted with an instruction record (Alpaca template, chat template or raw)."""

from __future__ import annotations

from typing import Any

from recipe_runner import StageError

from ...common.prompts import alpaca_prompt, chat_prompt

SCORE_PROMPT = (
    "Given the input `{instruction_and_input}` and correct output `{output}`, score the model response "
    "`{response}` on a scale from 0 to 100, where 100 is the best score. Respond with the integer number only."
)

COMPARE_PROMPT = (
    "You are a fair judge. Two assistants answered the same instruction. Decide which answer is better: "
    "more helpful, correct and relevant.\n\n"
    "### Instruction:\n{instruction_and_input}\n\n"
    "{reference_block}"
    "### Response A:\n{first}\n\n"
    "### Response B:\n{second}\n\n"
    "Answer with the single letter A or B (or TIE) on the first line, then give a one-sentence reason."
)


def format_instruction(item: dict[str, Any]) -> str:
    """Instruction plus optional input, as rasbt's ch07 format_input does."""
    instr = str(item.get("instruction") or item.get("prompt") or "")
    inp = item.get("input")
    if inp and str(inp).strip():
        return f"{instr}\n\n{inp}"
    return instr


def reference_block(item: dict[str, Any]) -> str:
    """The compare prompt's reference-answer section (empty without a reference)."""
    ref = item.get("output")
    return f"### Reference answer:\n{ref}\n\n" if ref else ""


def model_prompts(tokenizer: Any, items: list[dict[str, Any]], template: str, model_path: str | None) -> list[str]:
    """The prompts an evaluated model answers: ``template`` 'alpaca' (the
    standard Alpaca prompt), 'chat' (the tokenizer's chat template, one user
    turn) or 'raw' (instruction and input as plain text); an item with a
    ready ``prompt`` and no ``instruction`` is used as it is (alpaca, raw)."""
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise StageError(f"template 'chat': the tokenizer of {model_path} has no chat template")
        return [chat_prompt(tokenizer, format_instruction(it)) for it in items]
    return [_alpaca_or_raw(it, template) for it in items]


def _alpaca_or_raw(item: dict[str, Any], template: str) -> str:
    if "prompt" in item and item.get("prompt") and "instruction" not in item:
        return str(item["prompt"])
    if template == "alpaca":
        return alpaca_prompt(str(item.get("instruction", "")), item.get("input"))
    return format_instruction(item)
