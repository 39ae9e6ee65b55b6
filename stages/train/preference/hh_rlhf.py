"""Anthropic hh-rlhf texts ("\\n\\nHuman: ...\\n\\nAssistant: ...") split into
the prompt (the dialogue up to and including the last "\\n\\nAssistant:") and
the response after it: for preference pairs, SFT on the chosen side and PPO
prompts."""

from __future__ import annotations

from typing import Any

HH_ASSISTANT = "\n\nAssistant:"
HH_HUMAN = "\n\nHuman:"


def split_hh(text: str) -> tuple[str, str] | None:
    """hh-rlhf's "\\n\\nHuman: ...\\n\\nAssistant: ..." text -> (prompt, response):
    the prompt is everything up to and including the last "\\n\\nAssistant:"."""
    i = text.rfind(HH_ASSISTANT)
    if i < 0:
        return None
    cut = i + len(HH_ASSISTANT)
    return text[:cut], text[cut:]


def looks_like_hh(texts: list[str]) -> bool:
    """True when every text is an hh-rlhf dialogue (a Human and an Assistant turn)."""
    return bool(texts) and all(isinstance(t, str) and HH_HUMAN in t and HH_ASSISTANT in t for t in texts)


def split_hh_pairs(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """A batch of hh-rlhf pairs (full chosen / rejected dialogues) -> prompt,
    chosen and rejected responses; ``_ok`` is False where the two texts do not
    share the prompt (the pair is then kept as it was, to be dropped)."""
    out: dict[str, list[Any]] = {"prompt": [], "chosen": [], "rejected": [], "_ok": []}
    for chosen_text, rejected_text in zip(batch["chosen"], batch["rejected"], strict=True):
        parts = split_hh(chosen_text)
        if parts is None or not rejected_text.startswith(parts[0]):
            row = ("", chosen_text, rejected_text, False)
        else:
            prompt, chosen = parts
            row = (prompt, chosen, rejected_text[len(prompt) :], True)
        for column, value in zip(("prompt", "chosen", "rejected", "_ok"), row, strict=True):
            out[column].append(value)
    return out
