"""common/perplexity.py: the one perplexity; checked against the model's own
loss computed independently, over rows, windows of different lengths,
padding and masked labels."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from recipe_runner.stage import StageError
from recipe_runner_stages.common.perplexity import Perplexity, perplexity


def _model_loss(model: Any, ids: list[int], labels: list[int] | None = None) -> float:
    """The model's own mean next-token loss of one row (transformers shifts the labels)."""
    with torch.no_grad():
        target = torch.tensor([labels if labels is not None else ids])
        return float(model(input_ids=torch.tensor([ids]), labels=target).loss)


def test_perplexity_is_exp_of_the_mean_token_loss(tiny_lm: Any, verdict_rows: list[list[int]]) -> None:
    result = perplexity(tiny_lm, verdict_rows, batch_size=5)
    # every row predicts the same number of tokens, so the token mean is the mean of the row losses
    mean = sum(_model_loss(tiny_lm, r) for r in verdict_rows) / len(verdict_rows)
    assert result.loss == pytest.approx(mean, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(mean), rel=1e-5)
    assert (result.tokens, result.rows) == (12 * 23, 12)
    assert result.as_dict() == {"loss": result.loss, "perplexity": result.perplexity, "tokens": 276, "rows": 12}


def test_the_batch_size_does_not_change_the_result(tiny_lm: Any, verdict_rows: list[list[int]]) -> None:
    one, three, all_rows = (perplexity(tiny_lm, verdict_rows, batch_size=b) for b in (1, 5, 12))
    assert one.loss == pytest.approx(three.loss, rel=1e-6) and one.loss == pytest.approx(all_rows.loss, rel=1e-6)
    assert one.tokens == three.tokens == all_rows.tokens


def test_rows_of_different_lengths_weigh_by_tokens(tiny_lm: Any, verdict_rows: list[list[int]]) -> None:
    windows = [verdict_rows[0], verdict_rows[1][:7], verdict_rows[2], verdict_rows[3][:2]]
    result = perplexity(tiny_lm, windows, batch_size=2)
    predicted = [len(w) - 1 for w in windows]
    mean = sum(_model_loss(tiny_lm, w) * n for w, n in zip(windows, predicted, strict=True)) / sum(predicted)
    assert result.tokens == sum(predicted) == 23 + 6 + 23 + 1
    assert result.loss == pytest.approx(mean, rel=1e-5)


def test_a_dataset_and_plain_lists_give_the_same_result(tiny_lm: Any, verdict_rows: list[list[int]]) -> None:
    from datasets import Dataset

    from_lists = perplexity(tiny_lm, verdict_rows, batch_size=4)
    from_dataset = perplexity(tiny_lm, Dataset.from_dict({"input_ids": verdict_rows}), batch_size=4)
    assert from_dataset == from_lists


def test_padding_and_masked_labels_are_not_predicted(tiny_lm: Any, verdict_rows: list[list[int]]) -> None:
    from datasets import Dataset

    rows = verdict_rows[:4]
    # right padding through the attention mask: the last 8 positions of odd rows are not scored
    masks = [[1] * 24 if i % 2 == 0 else [1] * 16 + [0] * 8 for i in range(4)]
    padded = perplexity(tiny_lm, Dataset.from_dict({"input_ids": rows, "attention_mask": masks}), batch_size=4)
    expected_tokens = 23 + 15 + 23 + 15
    losses = [_model_loss(tiny_lm, r if i % 2 == 0 else r[:16]) for i, r in enumerate(rows)]
    mean = sum(loss * n for loss, n in zip(losses, [23, 15, 23, 15], strict=True)) / expected_tokens
    assert padded.tokens == expected_tokens
    assert padded.loss == pytest.approx(mean, rel=1e-5)

    # explicit labels: -100 positions are not predicted
    labels = [[-100] * 10 + r[10:] for r in rows]
    masked = perplexity(tiny_lm, Dataset.from_dict({"input_ids": rows, "labels": labels}), batch_size=3)
    assert masked.tokens == 4 * 14
    mean = sum(_model_loss(tiny_lm, r, lab) for r, lab in zip(rows, labels, strict=True)) / 4
    assert masked.loss == pytest.approx(mean, rel=1e-5)


def test_progress_counts_every_row(tiny_lm: Any, verdict_rows: list[list[int]]) -> None:
    seen: list[int] = []
    perplexity(tiny_lm, verdict_rows, batch_size=5, progress=seen.append)
    assert seen == [5, 5, 2]


def test_nothing_to_score_is_a_stage_error(tiny_lm: Any, verdict_rows: list[list[int]]) -> None:
    from datasets import Dataset

    rows = verdict_rows[:2]
    all_masked = Dataset.from_dict({"input_ids": rows, "labels": [[-100] * 24 for _ in rows]})
    with pytest.raises(StageError, match="no tokens to score"):
        perplexity(tiny_lm, all_masked)


def test_a_huge_loss_reports_a_finite_perplexity() -> None:
    assert Perplexity(loss=800.0, tokens=1, rows=1).perplexity == math.exp(700.0)
