"""Sample generations of the fine-tuned model on held-out prompts, next to
their reference answers: written to samples.jsonl and kept in the metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recipe_runner import StageContext

from ...common.prompts import chat_prompt
from .params import SFTParams


def write_samples(ctx: StageContext[SFTParams], model: Any, tok: Any, ds: Any, out_dir: Path) -> None:
    """Greedy responses to the first ``num_samples`` prompts of ``ds``."""
    from ...common.generation import GenerationSettings, generate_texts

    p = ctx.params
    if p.num_samples <= 0 or ds is None or len(ds) == 0:
        return
    items = sample_prompts(ds, tok, p.num_samples)
    was_training = model.training
    model.eval()
    texts = generate_texts(
        model,
        tok,
        [it["prompt"] for it in items],
        GenerationSettings(max_new_tokens=p.sample_max_new_tokens),
        batch_size=4,
    )
    if was_training:
        model.train()
    for it, t in zip(items, texts, strict=True):
        it["response"] = t.strip()
    with (out_dir / "samples.jsonl").open("w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    ctx.metrics["samples"] = [
        {k: (v[-300:] if k == "prompt" and isinstance(v, str) else (v or "")[:300]) for k, v in it.items()}
        for it in items
    ]
    for it in items:
        ctx.log.info("sample: %r -> %r", it["prompt"][-120:], it["response"][:200])


def sample_prompts(ds: Any, tok: Any, n: int) -> list[dict[str, Any]]:
    """The first ``n`` examples as {prompt, reference}: a prompt/completion
    pair (chat prompts rendered with the chat template), a chat up to its
    last turn, or the first half of a text (the second half as reference)."""
    return [_prompt_and_reference(row, tok) for row in ds.select(range(min(n, len(ds))))]


def _prompt_and_reference(row: dict[str, Any], tok: Any) -> dict[str, Any]:
    if "prompt" in row:
        prompt, ref = row["prompt"], row.get("completion")
        if isinstance(prompt, list):
            prompt = chat_prompt(tok, prompt)
            ref = ref[-1]["content"] if ref else None
    elif "messages" in row:
        msgs = row["messages"]
        prompt = chat_prompt(tok, msgs[:-1] if len(msgs) > 1 else msgs)
        ref = msgs[-1]["content"] if len(msgs) > 1 else None
    else:
        text = row["text"]
        prompt, ref = text[: max(1, len(text) // 2)][:300], text[len(text) // 2 :][:300]
    return {"prompt": prompt, "reference": ref}
