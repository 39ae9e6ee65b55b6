"""Held-out perplexity: exp of the mean token loss computed independently,
on packed rows and on blocks cut from a text dataset; a missing split fails
clearly."""

from __future__ import annotations

import json
import math

import pytest

from recipe_runner.artifacts import DATASET, PACKED_DATASET, Artifact
from recipe_runner.stage import StageError
from recipe_runner.testing import run_stage
from recipe_runner_stages.evaluate.stage import EvalStage


def test_perplexity_is_exp_of_mean_token_loss(model_art, model, packed_dir, tmp_path):
    import torch
    from datasets import load_from_disk

    res = run_stage(
        EvalStage,
        {"batch_size": 3, "device": "cpu"},
        inputs={"model": model_art, "dataset": Artifact(PACKED_DATASET, packed_dir)},
        workdir=tmp_path,
    )
    rows = load_from_disk(str(packed_dir))["validation"]["input_ids"]
    # independently: the model's own mean loss per row (all rows predict the same number of tokens)
    with torch.no_grad():
        losses = [float(model(input_ids=torch.tensor([r]), labels=torch.tensor([r])).loss) for r in rows]
    mean = sum(losses) / len(losses)
    assert res.metrics["eval_loss"] == pytest.approx(mean, rel=1e-5)
    assert res.metrics["perplexity"] == pytest.approx(math.exp(mean), rel=1e-5)
    assert res.metrics["perplexity_tokens"] == len(rows) * (len(rows[0]) - 1)
    report = json.loads((res.outputs["report"].path / "report.json").read_text())
    assert report["perplexity"]["split"] == "validation"
    assert report["metrics"]["perplexity"] == res.metrics["perplexity"]


def test_perplexity_on_text_dataset_blocks(model_art, model, tmp_path, tiny_tokenizer_dir):
    import torch
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    docs = [
        "It had always been his fate to have women say such things of him.",
        "The mere outline of a frame called up all Gisburn's past!",
    ] * 6
    path = tmp_path / "text"
    DatasetDict(
        {"train": Dataset.from_dict({"text": docs[:2]}), "validation": Dataset.from_dict({"text": docs})}
    ).save_to_disk(str(path))
    res = run_stage(
        EvalStage,
        {"block_size": 16, "device": "cpu"},
        inputs={"model": model_art, "dataset": Artifact(DATASET, path)},
        workdir=tmp_path / "w",
    )
    flat = []
    for d in docs:
        flat += tok(d)["input_ids"] + [tok.eos_token_id]
    blocks = torch.tensor(flat[: len(flat) // 16 * 16]).view(-1, 16)
    with torch.no_grad():
        mean = float(model(input_ids=blocks, labels=blocks).loss)
    assert res.metrics["perplexity"] == pytest.approx(math.exp(mean), rel=1e-5)


def test_bad_split_fails_clearly(model_art, packed_dir, tmp_path):
    with pytest.raises(StageError, match="no split 'test'"):
        run_stage(
            EvalStage,
            {"split": "test", "device": "cpu"},
            inputs={"model": model_art, "dataset": Artifact(PACKED_DATASET, packed_dir)},
            workdir=tmp_path / "b",
        )
