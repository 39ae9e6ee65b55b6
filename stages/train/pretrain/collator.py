"""Batches of fixed-length packed rows for next-token prediction."""

from __future__ import annotations

from typing import Any


def lm_collator(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack fixed-length rows; labels = input_ids where the data has none
    (the model shifts them), with padded positions (attention_mask 0) ignored."""
    import torch

    batch = {key: torch.stack([torch.as_tensor(r[key]) for r in rows]) for key in rows[0]}
    if "labels" not in batch:
        labels = batch["input_ids"].clone()
        if "attention_mask" in batch:
            labels[batch["attention_mask"] == 0] = -100
        batch["labels"] = labels
    return batch
