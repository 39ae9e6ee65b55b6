"""sft/trainer.py: the prepared training rows -- completion-only loss masks
exactly the prompt, on Alpaca records and on the chosen side of hh-rlhf
pairs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recipe_runner.artifacts import Artifact
from recipe_runner.stage import StageContext
from recipe_runner_stages.common.prompts import alpaca_prompt
from recipe_runner_stages.train.sft.params import SFTParams
from recipe_runner_stages.train.sft.trainer import build_sft_trainer

MakeContext = Callable[..., StageContext[Any]]


def _sft_context(make_context: MakeContext, workdir: Path, params: dict[str, Any], inputs: dict[str, Artifact]) -> Any:
    return make_context(SFTParams.model_validate(params), inputs, name="sft", seed=0, workdir=workdir)


def test_completion_only_masks_exactly_the_prompt(
    tmp_path: Path,
    tiny_model: Artifact,
    alpaca_dataset: Artifact,
    data_dir: Path,
    make_context: MakeContext,
    fast: dict[str, Any],
) -> None:
    from transformers import AutoTokenizer

    inputs = {"model": tiny_model, "dataset": alpaca_dataset}
    ctx = _sft_context(make_context, tmp_path, {**fast, "eval_fraction": 0.0}, inputs)
    trainer, tok, train_ds, *_ = build_sft_trainer(ctx, str(tiny_model.path))
    prepared = trainer.train_dataset
    records = json.loads((data_dir / "instruction-data.json").read_text())[:96]
    expected_prompts = {alpaca_prompt(r["instruction"], r["input"]): r["output"] for r in records}
    tok2 = AutoTokenizer.from_pretrained(str(tiny_model.path))
    checked = 0
    for i in range(8):
        row = prepared[i]
        prompt = row["prompt"]
        assert expected_prompts[prompt] == row["completion"].removesuffix(tok2.eos_token)
        prompt_ids = tok2(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tok2(prompt + row["completion"], add_special_tokens=False)["input_ids"][:128]
        n = len(prompt_ids)
        assert row["input_ids"] == full_ids
        labels = row["labels"]
        assert all(x == -100 for x in labels[:n]), "a prompt token is not masked"
        assert labels[n:] == row["input_ids"][n:], "a completion token is masked"
        assert len(labels) > n
        checked += 1
    assert checked == 8

    params = {**fast, "eval_fraction": 0.0, "completion_only_loss": False}
    ctx2 = _sft_context(make_context, tmp_path / "b", params, inputs)
    trainer2, *_ = build_sft_trainer(ctx2, str(tiny_model.path))
    assert trainer2.train_dataset[0]["labels"] == trainer2.train_dataset[0]["input_ids"]


def test_sft_on_the_chosen_side_of_hh_rlhf_pairs(
    tmp_path: Path, tiny_model: Artifact, hh_dataset: Artifact, make_context: MakeContext, fast: dict[str, Any]
) -> None:
    from datasets import load_from_disk

    inputs = {"model": tiny_model, "dataset": hh_dataset}
    ctx = _sft_context(make_context, tmp_path, {**fast, "eval_fraction": 0.0, "max_length": 512}, inputs)
    trainer, tok, train_ds, *_ = build_sft_trainer(ctx, str(tiny_model.path))

    raw = load_from_disk(str(hh_dataset.path))["train"]
    assert len(train_ds) == len(raw)
    for row, orig in zip(train_ds.select(range(5)), raw.select(range(5)), strict=True):
        assert row["prompt"].endswith("\n\nAssistant:") and row["prompt"] + row["completion"] == orig["chosen"]
    row = trainer.train_dataset[0]
    n = len(tok(row["prompt"], add_special_tokens=False)["input_ids"])
    assert all(x == -100 for x in row["labels"][:n]) and row["labels"][n:] == row["input_ids"][n:]
