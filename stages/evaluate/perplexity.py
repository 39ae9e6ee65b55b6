"""The eval stage's held-out rows for perplexity (scored by
``common/perplexity.py``): the held-out split of the dataset input, and
fixed-length blocks built from a text dataset (documents tokenized, joined
with EOS, cut into blocks) or a tokenized dataset.  Packed datasets keep their
rows.
"""
from __future__ import annotations

from typing import Any

from recipe_runner.stage import StageError


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
