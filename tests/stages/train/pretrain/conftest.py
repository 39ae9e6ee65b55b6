"""Fixtures of the pretrain tests: packed rows built on the spot from real
text with the session's tiny tokenizer, and a small Llama made by the init
stage."""

from __future__ import annotations

from pathlib import Path

import pytest

from recipe_runner.artifacts import PACKED_DATASET, TOKENIZER, Artifact
from recipe_runner.testing import run_stage

#: the init stage's config of the model the pretrain tests train
TINY = {
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}


@pytest.fixture(scope="session")
def packed_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path, data_dir: Path) -> Path:
    """The-verdict + the start of tinyshakespeare (documents split at blank
    lines, EOS after each), tokenized, concatenated and cut into rows of 32
    tokens; the last 8 rows are the 'validation' split."""
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    seq_len, val_rows = 32, 8
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    text = (data_dir / "the-verdict.txt").read_text() + "\n\n" + (data_dir / "tinyshakespeare.txt").read_text()[:60_000]
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


@pytest.fixture(scope="module")
def packed(packed_dir: Path) -> Artifact:
    return Artifact(PACKED_DATASET, packed_dir, meta={"max_seq_length": 32})


@pytest.fixture(scope="module")
def tiny_config() -> dict[str, int]:
    """The init stage's config of the tiny model (a copy: tests may change it)."""
    return dict(TINY)


@pytest.fixture(scope="module")
def init_model(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Artifact:
    from recipe_runner_stages.model.init import InitStage

    res = run_stage(
        InitStage,
        {"config": TINY},
        inputs={"tokenizer": Artifact(TOKENIZER, tiny_tokenizer_dir)},
        workdir=tmp_path_factory.mktemp("pt_init"),
    )
    return res.outputs["model"]
