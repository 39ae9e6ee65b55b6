"""Fixtures shared by the stage families' tests."""

from __future__ import annotations

from pathlib import Path

import pytest


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
