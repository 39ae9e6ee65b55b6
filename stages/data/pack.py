"""``pack``: token ids -> fixed-length training rows.

Modes
- ``concat``: the course's concatenate-and-reshape (remainder dropped).
- ``document``: the same rows, plus ``position_ids`` that restart at every
  document (and every row) and ``labels`` with -100 on each document's first
  token, so no token attends to or predicts across a document boundary when
  the model honours packed position ids (flash-attention varlen, or the
  packed-sequence masks transformers builds from position_ids).
- ``bfd``: best-fit-decreasing bin packing (TRL's ``pack_dataset``), padded to
  the row length: ``labels`` -100 on pads and document starts,
  ``position_ids`` per document (the padding is a run of its own), and, when
  asked, ``attention_mask``.  transformers separates packed documents by their
  position ids only when no attention mask is passed, so the mask is off by
  default (pads then need none: nothing real follows them and their labels are
  -100).
- ``sliding``: windows of ``max_seq_length`` tokens every ``stride`` tokens
  over the concatenated stream (the LLM workshop's GPTDatasetV1).

All of it runs on numpy views of the Arrow buffers, batch by batch, with a
carry of the unfinished tail between batches (and shards).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from recipe_runner.artifacts import PACKED_DATASET, TOKENIZED_DATASET, Artifact
from recipe_runner.stage import Input, Params, PlanView, Stage, StageContext, StageError

from ._util import (
    order_metrics,
    ShardStore, artifact_identity, load_arrow, load_dataset_dict, with_quiet_datasets, require_column,
    save_dataset_dict, shard_ranges, shard_size_field,
)

Mode = Literal["concat", "document", "bfd", "sliding"]

COLUMNS = {
    "concat": ("input_ids",),
    "sliding": ("input_ids",),
    "document": ("input_ids", "position_ids", "labels"),
    "bfd": ("input_ids", "labels", "position_ids"),
}


class PackParams(Params):
    mode: Mode = Field(
        "concat",
        description=("'concat' (the course: concatenate all documents, cut rows of max_seq_length, drop the "
                     "remainder), 'document' (the same rows plus position_ids restarting per document and labels "
                     "-100 at document starts), 'bfd' (best-fit-decreasing bin packing of whole documents, padded, "
                     "with labels/position_ids), 'sliding' (windows every 'stride' tokens)."))
    max_seq_length: int = Field(1024, ge=2, description="Tokens per row (the course used 32).")
    stride: int | None = Field(
        None, ge=1,
        description=("Sliding mode: tokens between window starts (default: max_seq_length, i.e. no overlap). The "
                     "workshop's GPTDatasetV1(max_length=M, stride=S) pairs are exactly these rows with "
                     "max_seq_length M+1: input = row[:-1], target = row[1:]."))
    overflow: Literal["split", "truncate"] = Field(
        "split", description="BFD mode: a document longer than max_seq_length is 'split' into pieces or 'truncate'd.")
    attention_mask: bool = Field(
        False,
        description=("BFD mode: also write an attention_mask (0 on pads). Off by default: transformers' sdpa/eager "
                     "attention keeps packed documents apart through position_ids only when no attention mask is "
                     "passed (and no KV cache is used, as in training); with a mask, documents in a row see each "
                     "other. Pads need no mask: they come last, have their own position run and labels -100."))
    pad_token_id: int | None = Field(
        None, description="BFD mode: the padding id (default: the tokenizer's, from the tokenized dataset's metadata).")
    export_parquet: bool = Field(
        False, description="Also write each split as parquet/<split>.parquet inside the output (the course saved a parquet file).")
    batch_size: int = Field(10_000, ge=1, description="Documents read per Arrow batch.")
    shard_size: int = shard_size_field(200_000)

    @model_validator(mode="after")
    def _check(self) -> "PackParams":
        if self.stride is not None and self.mode != "sliding":
            raise ValueError("'stride' applies to mode 'sliding' only")
        if self.attention_mask and self.mode != "bfd":
            raise ValueError("'attention_mask' applies to mode 'bfd' only (the other modes have no padding)")
        return self

    def columns(self) -> tuple[str, ...]:
        cols = COLUMNS[self.mode]
        return cols + ("attention_mask",) if self.attention_mask else cols


# ------------------------------------------------------------ the packers


class _Streamer:
    """Concat / document / sliding packing over a stream of token batches."""

    def __init__(self, mode: str, L: int, stride: int, carry: Any = None, carry_starts: Any = None,
                 skip: int = 0):
        import numpy as np

        self.mode, self.L, self.S, self.skip = mode, L, stride, skip
        self.carry = np.zeros(0, np.int32) if carry is None else carry
        self.carry_starts = np.zeros(0, bool) if carry_starts is None else carry_starts

    def push(self, flat: Any, lengths: Any) -> dict[str, Any] | None:
        import numpy as np

        starts = np.zeros(len(flat), dtype=bool)
        nz = lengths[lengths > 0]
        if len(nz):
            starts[np.concatenate(([0], np.cumsum(nz)[:-1]))] = True
        buf = np.concatenate((self.carry, flat)) if len(self.carry) else flat
        sflags = np.concatenate((self.carry_starts, starts)) if len(self.carry_starts) else starts
        L = self.L
        if self.mode == "sliding":
            if self.skip:  # a stride longer than the row skips tokens past the end of the last batch
                k = min(self.skip, len(buf))
                buf, sflags, self.skip = buf[k:], sflags[k:], self.skip - k
            if len(buf) < L:
                self.carry, self.carry_starts = buf, sflags
                return None
            n = (len(buf) - L) // self.S + 1
            view = np.lib.stride_tricks.sliding_window_view(buf, L)[:: self.S][:n]
            rows = np.ascontiguousarray(view)
            nxt = n * self.S
            self.skip = max(0, nxt - len(buf))
            self.carry, self.carry_starts = buf[nxt:].copy(), sflags[nxt:].copy()
            return {"input_ids": rows}
        n = len(buf) // L
        cut = n * L
        rows = buf[:cut].reshape(n, L)
        out = {"input_ids": rows}
        if self.mode == "document" and n:
            f = sflags[:cut].reshape(n, L)
            out.update(document_columns(rows, f))
        self.carry, self.carry_starts = buf[cut:].copy(), sflags[cut:].copy()
        return out if n else None


def document_columns(rows: Any, starts: Any) -> dict[str, Any]:
    """position_ids restarting at each document start and at each row start;
    labels = input_ids with -100 on document starts."""
    import numpy as np

    n, L = rows.shape
    col = np.broadcast_to(np.arange(L, dtype=np.int32), (n, L))
    marker = starts.copy()
    marker[:, 0] = True
    last = np.maximum.accumulate(np.where(marker, col, 0), axis=1)
    pos = (col - last).astype(np.int32)
    labels = rows.astype(np.int32, copy=True)
    labels[starts] = -100
    return {"position_ids": pos, "labels": labels}


def pad_bins(values: Any, row_offsets: Any, seq_lengths_flat: Any, L: int, pad: int) -> dict[str, Any]:
    """Variable-length packed rows -> padded (n, L) matrices."""
    import numpy as np

    n = len(row_offsets) - 1
    row_len = np.diff(row_offsets)
    total = int(row_offsets[-1])
    ids = np.full((n, L), pad, dtype=np.int32)
    r = np.repeat(np.arange(n), row_len)
    c = np.arange(total) - np.repeat(row_offsets[:-1], row_len)
    ids[r, c] = values
    mask = np.zeros((n, L), dtype=np.int8)
    mask[r, c] = 1
    # position ids per packed document; the padding is a run of its own (0, 1, ...)
    seq_start_flat = np.concatenate(([0], np.cumsum(seq_lengths_flat)[:-1]))
    pos_flat = np.arange(total) - np.repeat(seq_start_flat, seq_lengths_flat)
    pos = np.broadcast_to(np.arange(L, dtype=np.int32), (n, L)) - row_len[:, None].astype(np.int32)
    pos = np.maximum(pos, 0).astype(np.int32)
    pos[r, c] = pos_flat
    starts = np.zeros((n, L), dtype=bool)
    starts[r, c] = pos_flat == 0
    labels = np.where(mask.astype(bool) & ~starts, ids, -100).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": pos}


def _features(columns: tuple[str, ...], L: int) -> Any:
    from datasets import Features, List, Value

    dt = {"input_ids": "int32", "position_ids": "int32", "labels": "int32", "attention_mask": "int8"}
    return Features({c: List(Value(dt[c]), length=L) for c in columns})


def _write_rows(writer: Any, cols: dict[str, Any], columns: tuple[str, ...]) -> int:
    import pyarrow as pa

    n, L = cols["input_ids"].shape
    if n == 0:
        return 0
    arrays = {}
    for c in columns:
        m = cols[c]
        typ = pa.int8() if c == "attention_mask" else pa.int32()
        arrays[c] = pa.FixedSizeListArray.from_arrays(pa.array(m.reshape(-1), typ), L)
    writer.write_table(pa.table(arrays))
    return n


def _batches(ds: Any, batch_size: int) -> Any:
    """(flat int32 token values, per-document lengths) for each Arrow batch."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    for tab in ds.with_format("arrow", columns=["input_ids"]).iter(batch_size=batch_size):
        col = tab.column("input_ids").combine_chunks()
        lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        flat = pc.list_flatten(col)
        if flat.type != pa.int32():
            flat = flat.cast(pa.int32())
        yield flat.to_numpy(zero_copy_only=False), lengths


# ------------------------------------------------------------------ stage


class PackStage(Stage):
    name = "pack"
    version = "2"
    description = ("Pack token ids into fixed-length rows: the course's concatenate-and-reshape, document-aware "
                   "rows (position ids per document, or best-fit bin packing with padding), or sliding windows.")
    Params = PackParams
    inputs = {"dataset": Input(TOKENIZED_DATASET, description="Token ids per document (from tokenize).")}
    outputs = {"dataset": PACKED_DATASET}

    @classmethod
    def cross_check(cls, view: PlanView) -> list[str]:
        errs = []
        p: PackParams = view.params  # type: ignore[assignment]
        up = view.upstream.get("dataset")
        if up and p.mode in ("document", "bfd"):
            up_params = up[2]
            if getattr(up_params, "add_eos", True) is False and getattr(up_params, "add_bos", True) is False:
                errs.append(f"pack mode {p.mode!r}: the tokenize stage adds neither BOS nor EOS, so packed "
                            "documents run together with no separator token")
        return errs

    @with_quiet_datasets
    def run(self, ctx: StageContext) -> dict[str, Artifact]:
        import numpy as np

        p: PackParams = ctx.params  # type: ignore[assignment]
        art = ctx.input("dataset")
        dd = load_dataset_dict(art, "tokenized dataset")
        require_column(dd, "input_ids", "tokenized dataset", param="(run tokenize first)")
        L = p.max_seq_length
        pad = p.pad_token_id if p.pad_token_id is not None else art.meta.get("pad_token_id")
        if p.mode == "bfd" and pad is None:
            raise StageError("mode 'bfd' needs a pad token id: set pad_token_id (the tokenized dataset's "
                             "metadata has none)")
        key = {"stage": "pack", "v": self.version, "params": p.model_dump(mode="json"), "pad": pad,
               "input": artifact_identity(art)}
        store = ShardStore(ctx.checkpoint_dir / "pack-shards", key, ctx.log)
        m = ctx.metrics
        out_splits: dict[str, Any] = {}
        total_docs = sum(len(d) for d in dd.values())
        with ctx.progress(f"pack ({p.mode})", total=total_docs) as prog:
            for split, ds in dd.items():
                shards = shard_ranges(len(ds), p.shard_size)
                parts = []
                carry = carry_starts = None
                skip = 0
                stats = {"rows": 0, "tokens_in": 0, "tokens_out": 0, "pad_tokens": 0}
                for si, (a, b) in enumerate(shards):
                    part = ds.select(range(a, b))
                    last = si == len(shards) - 1

                    def write(tmp: Path, part: Any = part, carry: Any = carry, carry_starts: Any = carry_starts,
                              last: bool = last, skip: int = skip) -> dict[str, Any]:
                        return self._pack_shard(part, p, pad, tmp, carry, carry_starts, last, skip)

                    path, meta = store.get_or_make(f"{split}-{si:05d}", write)
                    if (path / "carry.npy").exists():
                        carry = np.load(path / "carry.npy")
                        carry_starts = np.load(path / "carry_starts.npy")
                        skip = int(meta.get("skip", 0))
                    if meta["rows"]:
                        parts.append(load_arrow(path / "rows.arrow"))
                    for k in stats:
                        stats[k] += meta[k]
                    prog.advance(b - a)
                m[f"{split}_rows"] = stats["rows"]
                m[f"{split}_tokens_in"] = stats["tokens_in"]
                m[f"{split}_tokens_dropped"] = stats["tokens_in"] - stats["tokens_out"]
                if p.mode == "bfd" and stats["rows"]:
                    m[f"{split}_padding_fraction"] = round(stats["pad_tokens"] / (stats["rows"] * L), 6)
                if not parts:
                    msg = (f"split {split!r} has {stats['tokens_in']} tokens, fewer than one row of "
                           f"max_seq_length {L}")
                    if split == "train":
                        raise StageError(msg + "; lower max_seq_length or add data")
                    ctx.log.warning("%s: the split is left out", msg)
                    m[f"{split}_left_out"] = 1
                    continue
                from datasets import concatenate_datasets

                out_splits[split] = concatenate_datasets(parts) if len(parts) > 1 else parts[0]

        out = ctx.output_path("dataset")
        save_dataset_dict(out_splits, out)
        rows = sum(len(d) for d in out_splits.values())
        m["rows"] = rows
        m["max_seq_length"] = L
        if p.mode == "bfd" and rows:
            pads = sum(m.get(f"{s}_padding_fraction", 0) * len(d) * L for s, d in out_splits.items())
            m["padding_fraction"] = round(pads / (rows * L), 6)
        m["shards_reused"] = store.reused
        m["shards_computed"] = store.computed
        order_metrics(ctx.metrics, ['rows', 'max_seq_length', 'padding_fraction', 'train_rows', 'train_tokens_dropped'])
        if p.export_parquet:
            pq = out / "parquet"
            pq.mkdir(exist_ok=True)
            for split, d in out_splits.items():
                d.to_parquet(str(pq / f"{split}.parquet"))
        meta = {"max_seq_length": L, "mode": p.mode, "columns": list(p.columns()),
                "splits": {s: len(d) for s, d in out_splits.items()}}
        for k in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id"):
            if k in art.meta:
                meta[k] = art.meta[k]
        if p.export_parquet:
            meta["parquet"] = {s: f"parquet/{s}.parquet" for s in out_splits}
        return {"dataset": Artifact(PACKED_DATASET, out, meta=meta)}

    @staticmethod
    def _pack_shard(part: Any, p: PackParams, pad: int | None, tmp: Path, carry: Any, carry_starts: Any,
                    last: bool, skip: int = 0) -> dict[str, Any]:
        import numpy as np
        from datasets.arrow_writer import ArrowWriter

        L = p.max_seq_length
        stats = {"rows": 0, "tokens_in": 0, "tokens_out": 0, "pad_tokens": 0}
        writer = ArrowWriter(features=_features(p.columns(), L), path=str(tmp / "rows.arrow"))
        try:
            if p.mode == "bfd":
                for flat, lengths in _batches(part, p.batch_size):
                    stats["tokens_in"] += int(lengths.sum())
                    cols, used = _bfd(flat, lengths, L, p.overflow, pad)
                    if cols is not None:
                        n = _write_rows(writer, cols, p.columns())
                        stats["rows"] += n
                        stats["tokens_out"] += used
                        stats["pad_tokens"] += n * L - used
            else:
                s = _Streamer(p.mode, L, p.stride or L, carry, carry_starts, skip)
                carried = len(s.carry)
                for flat, lengths in _batches(part, p.batch_size):
                    stats["tokens_in"] += int(lengths.sum())
                    cols = s.push(flat, lengths)
                    if cols is not None:
                        stats["rows"] += _write_rows(writer, cols, p.columns())
                moved = stats["tokens_in"] + carried - len(s.carry)  # tokens that entered rows here
                if p.mode == "sliding" and last:
                    moved += min(len(s.carry), max(0, L - s.S))  # the tail the last window still covers
                stats["tokens_out"] = moved
                np.save(tmp / "carry.npy", s.carry)
                np.save(tmp / "carry_starts.npy", s.carry_starts)
                stats["skip"] = s.skip
        finally:
            writer.finalize()
            writer.close()
        return stats


def _bfd(flat: Any, lengths: Any, L: int, overflow: str, pad: int) -> tuple[dict[str, Any] | None, int]:
    """Best-fit-decreasing packing of one batch of documents with TRL's
    ``pack_dataset``, then padding to L."""
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable
    from trl.data_utils import pack_dataset

    if not len(lengths) or not int(lengths.sum()):
        return None, 0
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
    tab = pa.table({"input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int32()))})
    ds = Dataset(InMemoryTable(tab))
    packed = pack_dataset(ds, L, strategy="bfd_split" if overflow == "split" else "bfd",
                          map_kwargs={"batch_size": len(ds), "keep_in_memory": True})
    t = packed.with_format("arrow")[:]
    ids = t.column("input_ids").combine_chunks()
    seq = t.column("seq_lengths").combine_chunks()
    import pyarrow.compute as pc

    values = pc.list_flatten(ids).to_numpy(zero_copy_only=False).astype(np.int32)
    row_len = pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    row_offsets = np.concatenate(([0], np.cumsum(row_len)))
    seq_flat = pc.list_flatten(seq).to_numpy(zero_copy_only=False).astype(np.int64)
    cols = pad_bins(values, row_offsets, seq_flat, L, pad)
    return cols, int(row_offsets[-1])
