"""Batch encoding of the tokenize stage: documents -> ``input_ids`` (BOS/EOS
added) and ``num_tokens``, assembled as Arrow arrays from one numpy buffer
per batch, shard by shard (in the worker pool)."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..workers import in_worker

_BACKENDS: dict[str, tuple[str, Any]] = {}


def encode_texts(texts: list[str], tok_dir: str) -> list[list[int]]:
    """Token ids of each text, without special tokens, by the tokenizer saved in ``tok_dir``."""
    kind, tok = _backend(tok_dir)
    if kind == "rust":
        return [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]
    ids: list[list[int]] = tok(texts, add_special_tokens=False)["input_ids"]
    return ids


def tokenize_batch(
    table: Any, tok_dir: str, text_column: str, bos: int | None, eos: int | None, keep_text: bool
) -> Any:
    """Batched map function: ``input_ids`` (int32 lists, BOS/EOS added) and
    ``num_tokens``, built as Arrow arrays from one flat numpy buffer; the
    other columns (and the text with ``keep_text``) are kept."""
    import numpy as np
    import pyarrow as pa

    texts = table.column(text_column).combine_chunks().fill_null("").to_pylist()
    offsets, values, n_tok = _with_specials(encode_texts(texts, tok_dir), bos, eos)
    if offsets[-1] >= 2**31:
        raise ValueError("a batch holds more than 2**31 tokens; lower batch_size")
    input_ids = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int32()))
    cols = {name: table.column(name) for name in table.column_names if name != text_column or keep_text}
    cols["input_ids"] = input_ids
    cols["num_tokens"] = pa.array(n_tok.astype(np.int32), pa.int32())
    return pa.table(cols)


def tokenize_shard(
    table: Any, tmp: Path, batch_size: int, features: Any, rust_parallel: bool, **kw: Any
) -> dict[str, Any]:
    """One shard: ``data.arrow`` (the other columns, input_ids, num_tokens) and
    its token count.  In a worker process the Rust tokenizer runs one thread;
    in the stage's own process (one worker, one shard left, not Linux) it uses
    its thread pool unless TOKENIZERS_PARALLELISM says otherwise."""
    import pyarrow.compute as pc
    from datasets.arrow_writer import ArrowWriter

    tokens = 0
    with (
        rust_threads(rust_parallel and not in_worker()),
        ArrowWriter(features=features, path=str(tmp / "data.arrow")) as w,
    ):
        for a in range(0, table.num_rows, batch_size):
            t = tokenize_batch(table.slice(a, batch_size), **kw)
            tokens += int(pc.sum(t.column("num_tokens")).as_py() or 0)
            w.write_table(t)
        w.finalize()
    return {"rows": table.num_rows, "tokens": tokens}


@contextlib.contextmanager
def rust_threads(on: bool) -> Iterator[None]:
    """Turn the Rust tokenizer's thread pool on or off for this block (and
    for worker processes forked in it), restoring the setting afterwards.

    On: datasets' multi-process ``map`` (earlier stages in the same run) sets
    TOKENIZERS_PARALLELISM=false in the real process environment and only
    restores Python's ``os.environ`` object, so the Rust library would stay
    single-threaded for the rest of the process (measured: CPU time equal to
    wall time).  Off: each forked worker runs one Rust thread (and the
    library does not warn about forking after its pool was used)."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if on else "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def output_features(features: Any, text_column: str, keep_text: bool) -> Any:
    """The tokenized split's features: the input's (without the text unless
    ``keep_text``), then input_ids and num_tokens."""
    from datasets import Features, List, Value

    out = {k: v for k, v in features.items() if k != text_column or keep_text}
    out["input_ids"] = List(Value("int32"))
    out["num_tokens"] = Value("int32")
    return Features(out)


def empty_dataset(features: Any) -> Any:
    """An empty Dataset with these features (the template ``save_streamed`` writes with)."""
    from datasets import Dataset

    return Dataset.from_dict({k: [] for k in features}, features=features)


def shard_tables(files: list[Path]) -> Iterator[Any]:
    """The record batches of the shards' Arrow files, in order, memory-mapped."""
    import pyarrow as pa

    for f in files:
        with pa.memory_map(str(f)) as src:
            for batch in pa.ipc.open_stream(src):
                yield pa.Table.from_batches([batch])


def _backend(tok_dir: str) -> tuple[str, Any]:
    """The tokenizer saved in ``tok_dir``, loaded once per process: its Rust
    ``tokenizers.Tokenizer`` when it has a tokenizer.json, else transformers'."""
    if tok_dir not in _BACKENDS:
        f = Path(tok_dir) / "tokenizer.json"
        if f.exists():
            from tokenizers import Tokenizer

            _BACKENDS[tok_dir] = ("rust", Tokenizer.from_file(str(f)))
        else:  # a tokenizer without a Rust backend (e.g. SentencePiece-only)
            from transformers import AutoTokenizer

            _BACKENDS[tok_dir] = ("hf", AutoTokenizer.from_pretrained(tok_dir))
    return _BACKENDS[tok_dir]


def _with_specials(ids: list[list[int]], bos: int | None, eos: int | None) -> tuple[Any, Any, Any]:
    """``(offsets, values, tokens per document)`` of the documents' ids with
    ``bos`` prepended and ``eos`` appended (where not None)."""
    import numpy as np

    lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    total = int(lens.sum())
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=total)
    extra = int(bos is not None) + int(eos is not None)
    if not extra:
        return np.concatenate(([0], np.cumsum(lens))), flat, lens
    n_tok = lens + extra
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(n_tok, out=offsets[1:])
    values = np.empty(int(offsets[-1]), dtype=np.int32)
    body_start = offsets[:-1] + int(bos is not None)
    # scatter each document's ids after its BOS slot
    pos = np.repeat(body_start - np.concatenate(([0], np.cumsum(lens)[:-1])), lens) + np.arange(total)
    values[pos] = flat
    if bos is not None:
        values[offsets[:-1]] = bos
    if eos is not None:
        values[offsets[1:] - 1] = eos
    return offsets, values, n_tok
