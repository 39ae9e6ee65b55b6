"""Token-level perplexity of a causal LM on held-out rows.

perplexity = exp(total cross-entropy / number of predicted tokens), summed over
every predicted token of every row (a mean over tokens, not a mean of
per-batch means, so the result does not depend on the batch size or on a
short last batch).  Rows come from a packed dataset, or are built from a text
dataset (documents tokenized, joined with EOS, cut into fixed-length blocks)
or a tokenized dataset.
"""
from __future__ import annotations

import math
from typing import Any

from recipe_runner.stage import StageError

MODEL_COLUMNS = ("input_ids", "labels", "attention_mask", "position_ids")


def pick_split(ds, split: str | None, what: str) -> tuple[str, Any]:
    """The requested split, else 'validation', else 'test'; 'train' only when
    asked for explicitly (it is not held out)."""
    from datasets import Dataset

    if isinstance(ds, Dataset):
        return "train", ds
    if split is not None:
        if split not in ds:
            raise StageError(f"eval: {what} has no split {split!r} (splits: {list(ds)})")
        return split, ds[split]
    for name in ("validation", "test"):
        if name in ds and len(ds[name]):
            return name, ds[name]
    raise StageError(f"eval: {what} has no 'validation' or 'test' split for a held-out perplexity "
                     f"(splits: {list(ds)}); set `split` (e.g. split: train, which is not held out)")


def blocks_from_ids(ds, block_size: int, eos_id: int | None, num_proc: int | None = None):
    """Concatenate per-document ``input_ids`` (EOS between documents) and cut
    into ``block_size`` rows; the tail shorter than a block is dropped."""

    def chunk(batch):
        flat: list[int] = []
        for ids in batch["input_ids"]:
            flat.extend(ids)
            if eos_id is not None and (not ids or ids[-1] != eos_id):
                flat.append(eos_id)
        n = len(flat) // block_size * block_size
        return {"input_ids": [flat[i:i + block_size] for i in range(0, n, block_size)]}

    return ds.select_columns(["input_ids"]).map(chunk, batched=True, batch_size=2000,
                                                 remove_columns=["input_ids"], num_proc=num_proc)


def blocks_from_text(ds, tokenizer, column: str, block_size: int, num_proc: int | None = None):
    if column not in ds.column_names:
        raise StageError(f"eval: the dataset has no text column {column!r} (columns: {ds.column_names})")
    tok = ds.select_columns([column]).map(
        lambda b: {"input_ids": tokenizer(b[column], add_special_tokens=False)["input_ids"]},
        batched=True, remove_columns=[column], num_proc=num_proc)
    return blocks_from_ids(tok, block_size, tokenizer.eos_token_id, num_proc)


def token_perplexity(model, rows, batch_size: int = 8, progress=None) -> dict[str, float]:
    """Sum of next-token cross-entropy over all predicted tokens of ``rows``
    (a datasets.Dataset of fixed-length ``input_ids``, with optional labels /
    attention_mask / position_ids) and its exp.  Labels default to the inputs;
    -100 and padded positions are not predicted."""
    import torch
    import torch.nn.functional as F

    cols = [c for c in MODEL_COLUMNS if c in rows.column_names]
    data = rows.select_columns(cols).with_format("torch")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            batch = data[start:start + batch_size]
            input_ids = batch["input_ids"].to(device)
            labels = batch["labels"].to(device) if "labels" in batch else input_ids.clone()
            kwargs: dict[str, Any] = {}
            if "attention_mask" in batch:
                mask = batch["attention_mask"].to(device)
                kwargs["attention_mask"] = mask
                if "labels" not in batch:
                    labels = labels.masked_fill(mask == 0, -100)
            if "position_ids" in batch:
                kwargs["position_ids"] = batch["position_ids"].to(device)
            logits = model(input_ids=input_ids, **kwargs).logits
            shift_logits = logits[:, :-1, :].float()
            shift_labels = labels[:, 1:]
            loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                                   ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((shift_labels != -100).sum())
            if progress is not None:
                progress.advance(len(input_ids))
    if count == 0:
        raise StageError("eval: no tokens to score for perplexity (all labels masked or no rows)")
    mean = total / count
    return {"loss": mean, "perplexity": math.exp(min(mean, 700.0)), "tokens": count, "rows": len(data)}
