"""Token-level perplexity of a causal LM, the one implementation every stage
uses (the eval stage on held-out rows, quantize before and after).

perplexity = exp(total next-token cross-entropy / number of predicted tokens),
summed over every predicted token of every row: a mean over tokens, not a mean
of per-batch means, so the result does not depend on the batch size or on a
short last batch.  Rows are batched by length (shortest first, in their order
within a length), so rows of different lengths, e.g. token windows with a
short last one, need no padding."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from recipe_runner.stage import StageError

from .models import MODEL_COLUMNS

#: a mean loss above this is reported as exp(700): math.exp overflows past ~709.78
MAX_LOSS = 700.0


@dataclass(frozen=True)
class Perplexity:
    """The result: mean next-token cross-entropy over ``tokens`` predicted
    tokens of ``rows`` rows, and its exp."""

    loss: float
    tokens: int
    rows: int

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, MAX_LOSS))

    def as_dict(self) -> dict[str, float | int]:
        return {"loss": self.loss, "perplexity": self.perplexity, "tokens": self.tokens, "rows": self.rows}


def perplexity(
    model: Any,
    rows: Any,
    batch_size: int = 8,
    progress: Callable[[int], object] | None = None,
) -> Perplexity:
    """Perplexity of ``model`` on ``rows``: a ``datasets.Dataset`` with
    ``input_ids`` (and optional ``labels`` / ``attention_mask`` /
    ``position_ids``) or plain lists of token ids.  Labels default to the
    inputs; -100 labels and padded positions (attention mask 0) are not
    predicted.  ``progress`` is called with the number of rows of each batch."""
    import torch

    data = _as_dataset(rows)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for batch in _batches_by_length(data, batch_size):
            loss, predicted = _summed_next_token_loss(model, batch, device)
            total += loss
            count += predicted
            if progress is not None:
                progress(len(batch["input_ids"]))
    if count == 0:
        raise StageError("no tokens to score for perplexity (all labels masked or no rows)")
    return Perplexity(loss=total / count, tokens=count, rows=len(data))


def _as_dataset(rows: Any) -> Any:
    from datasets import Dataset

    if isinstance(rows, Dataset):
        return rows
    token_rows: Sequence[Sequence[int]] = rows
    return Dataset.from_dict({"input_ids": [list(r) for r in token_rows]})


def _batches_by_length(data: Any, batch_size: int) -> Iterator[dict[str, Any]]:
    """Batches of ``batch_size`` rows of one length as torch tensors (the
    model columns only), shortest rows first."""
    import pyarrow.compute as pc

    columns = [c for c in MODEL_COLUMNS if c in data.column_names]
    data = data.select_columns(columns)
    lengths = pc.list_value_length(data.with_format("arrow")["input_ids"]).to_pylist()
    distinct = sorted(set(lengths))
    groups = (
        [data]
        if len(distinct) <= 1
        else [data.select([i for i, n in enumerate(lengths) if n == length]) for length in distinct]
    )
    for group in groups:
        tensors = group.with_format("torch")
        for start in range(0, len(tensors), batch_size):
            yield tensors[start : start + batch_size]


def _summed_next_token_loss(model: Any, batch: dict[str, Any], device: Any) -> tuple[float, int]:
    """(sum of next-token cross-entropy, number of predicted tokens) of one batch."""
    import torch.nn.functional as F

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
    loss = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return float(loss), int((shift_labels != -100).sum())
