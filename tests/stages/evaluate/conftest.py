"""Fixtures of the eval tests: a tiny model made by the init stage (its
1024 positions leave the default block size at 1024), and packed held-out
data built on the spot from real text with the shared tiny tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from recipe_runner.artifacts import TOKENIZER, Artifact
from recipe_runner.testing import run_stage
from recipe_runner_stages.model.init.stage import InitStage

TINY = {
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}


@pytest.fixture(scope="session")
def model_art(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Artifact:
    return run_stage(
        InitStage,
        {"config": TINY},
        inputs={"tokenizer": Artifact(TOKENIZER, tiny_tokenizer_dir)},
        workdir=tmp_path_factory.mktemp("ev_init"),
        seed=1,
    ).outputs["model"]


@pytest.fixture(scope="session")
def model(model_art: Artifact) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_art.path)).eval()


@pytest.fixture(scope="session")
def packed_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path, data_dir: Path) -> Path:
    """the-verdict + the start of tinyshakespeare (documents split at blank
    lines, EOS after each), concatenated and cut into rows of 32 tokens; the
    last 8 rows are the 'validation' split."""
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    seq_len, max_chars, val_rows = 32, 60_000, 8
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    text = (
        (data_dir / "the-verdict.txt").read_text() + "\n\n" + (data_dir / "tinyshakespeare.txt").read_text()[:max_chars]
    )
    docs = [d.strip() for d in text.split("\n\n") if d.strip()]
    ids = Dataset.from_dict({"text": docs}).map(
        lambda b: {"input_ids": [x + [tok.eos_token_id] for x in tok(b["text"])["input_ids"]]},
        batched=True,
        remove_columns=["text"],
    )

    def chunk(batch: dict[str, list[list[int]]]) -> dict[str, list[list[int]]]:
        flat = [t for row in batch["input_ids"] for t in row]
        n = len(flat) // seq_len * seq_len
        return {"input_ids": [flat[i : i + seq_len] for i in range(0, n, seq_len)]}

    rows = ids.map(chunk, batched=True, batch_size=10_000)
    n = len(rows)
    out = tmp_path_factory.mktemp("packed") / "packed"
    DatasetDict(
        {"train": rows.select(range(n - val_rows)), "validation": rows.select(range(n - val_rows, n))}
    ).save_to_disk(str(out))
    return out
