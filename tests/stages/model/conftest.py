"""Fixtures for the TinySolar flow stages (init/scale, pretrain, eval, export):
packed data built on the spot from real text with the shared tiny tokenizer."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "recipes" / "data"


def make_packed(tokenizer_dir: Path, out: Path, seq_len: int = 32, max_chars: int = 60_000,
                val_rows: int = 8) -> Path:
    """Tokenize the-verdict + the start of tinyshakespeare (documents split at
    blank lines, eos after each), concatenate and cut into fixed-length rows;
    the last ``val_rows`` rows become the 'validation' split."""
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    text = (DATA / "the-verdict.txt").read_text() + "\n\n" + (DATA / "tinyshakespeare.txt").read_text()[:max_chars]
    docs = [d.strip() for d in text.split("\n\n") if d.strip()]
    ids = Dataset.from_dict({"text": docs}).map(
        lambda b: {"input_ids": [x + [tok.eos_token_id] for x in tok(b["text"])["input_ids"]]},
        batched=True, remove_columns=["text"])

    def chunk(batch):
        flat = [t for row in batch["input_ids"] for t in row]
        n = len(flat) // seq_len * seq_len
        return {"input_ids": [flat[i:i + seq_len] for i in range(0, n, seq_len)]}

    rows = ids.map(chunk, batched=True, batch_size=10_000)
    n = len(rows)
    DatasetDict({"train": rows.select(range(n - val_rows)),
                 "validation": rows.select(range(n - val_rows, n))}).save_to_disk(str(out))
    return out


@pytest.fixture(scope="session")
def packed_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    return make_packed(tiny_tokenizer_dir, tmp_path_factory.mktemp("packed") / "packed")
