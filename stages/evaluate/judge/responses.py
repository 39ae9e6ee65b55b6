"""Greedy answers of a causal LM to instruction records: the evaluated
models' responses, and a local judge's verdicts."""

from __future__ import annotations

from typing import Any

from ...common.generation import GenerationSettings, generate_texts
from ...common.models import load_for_inference
from .prompts import model_prompts


def greedy_texts(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    repetition_penalty: float | None = None,
) -> list[str]:
    """Greedy continuations of ``prompts``, stripped."""
    settings = GenerationSettings(max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty or None)
    return [t.strip() for t in generate_texts(model, tokenizer, prompts, settings, batch_size=batch_size)]


def generate_responses(
    model_path: str | None,
    items: list[dict[str, Any]],
    *,
    template: str = "alpaca",
    max_new_tokens: int = 128,
    batch_size: int = 8,
    device: str = "auto",
    precision: str = "auto",
    model: Any = None,
    tokenizer: Any = None,
    repetition_penalty: float | None = None,
) -> list[str]:
    """Greedy responses of a model to instructions.

    ``items`` are dicts with ``instruction`` (+ optional ``input``) or a ready
    ``prompt``.  ``template``: ``alpaca`` (the standard Alpaca prompt), ``chat``
    (the tokenizer's chat template, one user turn) or ``raw`` (instruction and
    input as plain text).  Pass a loaded ``model``/``tokenizer`` to skip loading."""
    if model is None or tokenizer is None:
        if model_path is None:
            raise ValueError("generate_responses needs model_path or a loaded model and tokenizer")
        model, tokenizer = load_for_inference(model_path, device, precision)
    prompts = model_prompts(tokenizer, items, template, model_path)
    return greedy_texts(model, tokenizer, prompts, max_new_tokens, batch_size, repetition_penalty)
