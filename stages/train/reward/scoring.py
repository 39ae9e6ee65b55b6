"""Reward models: a one-output sequence classifier made from a causal LM (what
the reward stage trains), loaded back for scoring (what PPO does), and its
scores: of texts, and pairwise (chosen beats rejected) over token ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from recipe_runner import StageError


def load_reward_base(path: str, tok: Any, dtype: Any = None) -> Any:
    """A 1-output sequence classifier initialised from a causal LM (or an
    existing reward model), with the pad token the classifier pools on."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype or torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    return model


def load_reward_scorer(path: str, tok: Any, device: str) -> Any:
    """A trained reward model, frozen on ``device`` for scoring; one output
    (num_labels=1) is required."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).to(device)
    if model.config.num_labels != 1:
        raise StageError(f"reward model {path}: expected one output (num_labels=1), got {model.config.num_labels}")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    model.eval().requires_grad_(False)
    return model


def score_texts(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    batch_size: int = 16,
    max_length: int | None = None,
    add_eos: bool = True,
) -> list[float]:
    """Scalar rewards of a sequence-classification reward model, batched.
    EOS is appended as trl's RewardTrainer does during training, so scores
    are read at the same position."""
    import torch

    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    scores: list[float] = []
    eos = tokenizer.eos_token or ""
    try:
        model.eval()
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                chunk = [t if (not add_eos or t.endswith(eos)) else t + eos for t in texts[i : i + batch_size]]
                enc = tokenizer(
                    chunk,
                    return_tensors="pt",
                    padding=True,
                    truncation=max_length is not None,
                    max_length=max_length,
                    add_special_tokens=False,
                )
                enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                out = model(**enc).logits[:, 0]
                scores.extend(out.float().cpu().tolist())
    finally:
        tokenizer.padding_side = old_side
    return scores


def pairwise_accuracy(model: Any, ds: Any, pad_id: int, batch_size: int = 16) -> tuple[float, float]:
    """(accuracy, mean margin) of r(chosen) > r(rejected) over a dataset
    tokenized by RewardTrainer (columns chosen_ids / rejected_ids), so the
    held-out pairs are scored exactly as the trainer sees them."""
    model.eval()
    chosen = score_token_rows(model, ds["chosen_ids"], pad_id, batch_size)
    rejected = score_token_rows(model, ds["rejected_ids"], pad_id, batch_size)
    if not chosen:
        return float("nan"), float("nan")
    pairs = list(zip(chosen, rejected, strict=True))
    return sum(1 for a, b in pairs if a > b) / len(chosen), sum(a - b for a, b in pairs) / len(chosen)


def score_token_rows(model: Any, rows: Sequence[Sequence[int]], pad_id: int, batch_size: int) -> list[float]:
    """Scores of token-id rows, right-padded with ``pad_id`` batch by batch."""
    import torch

    device = next(model.parameters()).device
    out: list[float] = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, s in enumerate(chunk):
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, : len(s)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        out.extend(logits[:, 0].float().cpu().tolist())
    return out
