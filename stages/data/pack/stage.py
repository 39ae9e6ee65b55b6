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

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from recipe_runner import (
    DOCUMENT_SEPARATOR,
    PACKED_DATASET,
    SEQ_LENGTH,
    TOKENIZED_DATASET,
    Artifact,
    Facts,
    Input,
    Params,
    PlanView,
    Stage,
    StageContext,
    StageError,
)

from ...common.datasets import load_dataset_dict, require_column
from ...common.tokenizer_digest import TOKENIZER_DIGEST
from ..arrow_io import load_arrow, save_dataset_dict
from ..metrics import order_metrics
from ..params import MAX_BATCH_SIZE
from ..progress_bars import with_quiet_datasets
from ..shard_store import ShardStore, artifact_identity, result_params
from ..shards import shard_ranges
from .bfd import pack_bfd
from .rows import row_features, token_batches, write_rows
from .stream import RowStreamer

Mode = Literal["concat", "document", "bfd", "sliding"]
#: tokens per row beyond any model's context (64 MiB of ids per row)
MAX_SEQ_LENGTH = 2**24
#: ids are stored as int32
MAX_TOKEN_ID = 2**31 - 1

COLUMNS = {
    "concat": ("input_ids",),
    "sliding": ("input_ids",),
    "document": ("input_ids", "position_ids", "labels"),
    "bfd": ("input_ids", "labels", "position_ids"),
}


class PackParams(Params):
    mode: Mode = Field(
        "concat",
        description=(
            "'concat' (the course: concatenate all documents, cut rows of max_seq_length, drop the "
            "remainder), 'document' (the same rows plus position_ids restarting per document and labels "
            "-100 at document starts), 'bfd' (best-fit-decreasing bin packing of whole documents, padded, "
            "with labels/position_ids), 'sliding' (windows every 'stride' tokens)."
        ),
    )
    max_seq_length: int = Field(
        1024, ge=2, le=MAX_SEQ_LENGTH, description="Tokens per row (the course used 32; at most 2**24)."
    )
    stride: int | None = Field(
        None,
        ge=1,
        le=MAX_SEQ_LENGTH,
        description=(
            "Sliding mode: tokens between window starts (default: max_seq_length, i.e. no overlap). The "
            "workshop's GPTDatasetV1(max_length=M, stride=S) pairs are exactly these rows with "
            "max_seq_length M+1: input = row[:-1], target = row[1:]."
        ),
    )
    overflow: Literal["split", "truncate"] = Field(
        "split", description="BFD mode: a document longer than max_seq_length is 'split' into pieces or 'truncate'd."
    )
    attention_mask: bool = Field(
        False,
        description=(
            "BFD mode: also write an attention_mask (0 on pads). Off by default: transformers' sdpa/eager "
            "attention keeps packed documents apart through position_ids only when no attention mask is "
            "passed (and no KV cache is used, as in training); with a mask, documents in a row see each "
            "other. Pads need no mask: they come last, have their own position run and labels -100."
        ),
    )
    pad_token_id: int | None = Field(
        None,
        ge=0,
        le=MAX_TOKEN_ID,
        description="BFD mode: the padding id (default: the tokenizer's, from the tokenized dataset's metadata).",
    )
    export_parquet: bool = Field(
        False,
        description=(
            "Also write each split as parquet/<split>.parquet inside the output (the course saved a parquet file)."
        ),
    )
    batch_size: int = Field(
        10_000,
        ge=1,
        le=MAX_BATCH_SIZE,
        description=(
            "Documents read per Arrow batch. Not a run setting: 'bfd' packs each batch on its own, so the "
            "batch size changes which documents share a row."
        ),
    )
    shard_size: int = Field(
        200_000,
        ge=1,
        description=(
            "At most this many documents per checkpoint shard; each finished shard is kept in the stage's "
            "checkpoint directory, so a run that is killed midway redoes only the unfinished shards. Not a run "
            "setting: 'bfd' packs each shard on its own."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> PackParams:
        if self.stride is not None and self.mode != "sliding":
            raise ValueError("'stride' applies to mode 'sliding' only")
        if self.attention_mask and self.mode != "bfd":
            raise ValueError("'attention_mask' applies to mode 'bfd' only (the other modes have no padding)")
        return self

    def columns(self) -> tuple[str, ...]:
        cols = COLUMNS[self.mode]
        return (*cols, "attention_mask") if self.attention_mask else cols


@dataclass
class _SplitCounts:
    """What the shards of one split packed."""

    rows: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    pad_tokens: int = 0

    def add(self, meta: Mapping[str, Any]) -> None:
        self.rows += meta["rows"]
        self.tokens_in += meta["tokens_in"]
        self.tokens_out += meta["tokens_out"]
        self.pad_tokens += meta["pad_tokens"]


class PackStage(Stage[PackParams]):
    name = "pack"
    version = "3"  # 3: the tokenizer digest passed on in the output's meta
    description = (
        "Pack token ids into fixed-length rows: the course's concatenate-and-reshape, document-aware "
        "rows (position ids per document, or best-fit bin packing with padding), or sliding windows."
    )
    Params = PackParams
    inputs = {"dataset": Input(TOKENIZED_DATASET, description="Token ids per document (from tokenize).")}
    outputs = {"dataset": PACKED_DATASET}

    @classmethod
    def output_facts(cls, params: PackParams, inputs: Mapping[str, Facts]) -> Mapping[str, Facts]:
        return {"dataset": {SEQ_LENGTH: params.max_seq_length}}

    @classmethod
    def cross_check(cls, view: PlanView[PackParams]) -> list[str]:
        up = view.upstream.get("dataset")
        mode = view.params.mode
        if up is not None and mode in ("document", "bfd") and up.facts.get(DOCUMENT_SEPARATOR) is False:
            return [
                f"pack mode {mode!r}: the tokenize stage adds neither BOS nor EOS, so packed "
                "documents run together with no separator token"
            ]
        return []

    @with_quiet_datasets
    def run(self, ctx: StageContext[PackParams]) -> dict[str, Artifact]:
        p = ctx.params
        art = ctx.input("dataset")
        dd = load_dataset_dict(art, "dataset")
        require_column(dd, "input_ids", "dataset", hint="run tokenize first")
        pad = p.pad_token_id if p.pad_token_id is not None else art.meta.get("pad_token_id")
        if p.mode == "bfd" and pad is None:
            raise StageError(
                "mode 'bfd' needs a pad token id: set pad_token_id (the tokenized dataset's metadata has none)"
            )
        key = {
            "stage": "pack",
            "v": self.version,
            "params": result_params(p),
            "pad": pad,
            "input": artifact_identity(art),
        }
        store = ShardStore(ctx.checkpoint_dir / "pack-shards", key, ctx.log)
        out_splits: dict[str, Any] = {}
        with ctx.progress(f"pack ({p.mode})", total=sum(len(d) for d in dd.values())) as prog:
            for split, ds in dd.items():
                parts, counts = _pack_split(split, ds, p, pad, store, prog)
                packed = _split_result(split, parts, counts, p, ctx)
                if packed is not None:
                    out_splits[split] = packed
        out = ctx.output_path("dataset")
        save_dataset_dict(out_splits, out)
        _record_metrics(ctx.metrics, out_splits, p, store)
        if p.export_parquet:
            (out / "parquet").mkdir(exist_ok=True)
            for split, d in out_splits.items():
                d.to_parquet(str(out / "parquet" / f"{split}.parquet"))
        return {"dataset": Artifact(PACKED_DATASET, out, meta=_output_meta(p, art, out_splits))}


def _pack_split(
    split: str, ds: Any, p: PackParams, pad: int | None, store: ShardStore, prog: Any
) -> tuple[list[Any], _SplitCounts]:
    """Pack one split shard by shard, each shard starting from the carry the
    previous one left; return the shards' rows and the counts."""
    import numpy as np

    shards = shard_ranges(len(ds), p.shard_size)
    parts = []
    carry = carry_starts = None
    skip = 0
    counts = _SplitCounts()
    for si, (a, b) in enumerate(shards):
        state = {"carry": carry, "carry_starts": carry_starts, "skip": skip, "last": si == len(shards) - 1}

        def write(tmp: Path, part: Any = ds.select(range(a, b)), state: dict[str, Any] = state) -> dict[str, Any]:
            return _pack_shard(part, p, pad, tmp, **state)

        path, meta = store.get_or_make(f"{split}-{si:05d}", write)
        if (path / "carry.npy").exists():
            carry = np.load(path / "carry.npy")
            carry_starts = np.load(path / "carry_starts.npy")
            skip = int(meta.get("skip", 0))
        if meta["rows"]:
            parts.append(load_arrow(path / "rows.arrow"))
        counts.add(meta)
        prog.advance(b - a)
    return parts, counts


def _split_result(
    split: str, parts: list[Any], counts: _SplitCounts, p: PackParams, ctx: StageContext[PackParams]
) -> Any:
    """The packed split (its shards' rows), its metrics; None for a split
    too short for one row (an error for train, left out otherwise)."""
    m = ctx.metrics
    length = p.max_seq_length
    m[f"{split}_rows"] = counts.rows
    m[f"{split}_tokens_in"] = counts.tokens_in
    m[f"{split}_tokens_dropped"] = counts.tokens_in - counts.tokens_out
    if p.mode == "bfd" and counts.rows:
        m[f"{split}_padding_fraction"] = round(counts.pad_tokens / (counts.rows * length), 6)
    if not parts:
        msg = f"split {split!r} has {counts.tokens_in} tokens, fewer than one row of max_seq_length {length}"
        if split == "train":
            raise StageError(msg + "; lower max_seq_length or add data")
        ctx.log.warning("%s: the split is left out", msg)
        m[f"{split}_left_out"] = 1
        return None
    from datasets import concatenate_datasets

    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def _pack_shard(
    part: Any, p: PackParams, pad: int | None, tmp: Path, carry: Any, carry_starts: Any, skip: int, last: bool
) -> dict[str, Any]:
    """One shard: ``rows.arrow``, its counts, and (except for bfd) the carry
    of unfinished tokens for the next shard."""
    from datasets.arrow_writer import ArrowWriter

    writer = ArrowWriter(features=row_features(p.columns(), p.max_seq_length), path=str(tmp / "rows.arrow"))
    try:
        if p.mode != "bfd":
            streamer = RowStreamer(p.mode, p.max_seq_length, p.stride or p.max_seq_length, carry, carry_starts, skip)
            return _pack_stream_rows(part, p, tmp, writer, streamer, last)
        if pad is None:  # run() checks this before any shard
            raise StageError("mode 'bfd' needs a pad token id")
        return _pack_bfd_rows(part, p, pad, writer)
    finally:
        writer.finalize()
        writer.close()


def _pack_bfd_rows(part: Any, p: PackParams, pad: int, writer: Any) -> dict[str, Any]:
    length = p.max_seq_length
    stats = {"rows": 0, "tokens_in": 0, "tokens_out": 0, "pad_tokens": 0}
    for flat, lengths in token_batches(part, p.batch_size):
        stats["tokens_in"] += int(lengths.sum())
        cols, used = pack_bfd(flat, lengths, length, p.overflow, pad)
        if cols is not None:
            n = write_rows(writer, cols, p.columns())
            stats["rows"] += n
            stats["tokens_out"] += used
            stats["pad_tokens"] += n * length - used
    return stats


def _pack_stream_rows(
    part: Any, p: PackParams, tmp: Path, writer: Any, streamer: RowStreamer, last: bool
) -> dict[str, Any]:
    import numpy as np

    stats = {"rows": 0, "tokens_in": 0, "tokens_out": 0, "pad_tokens": 0}
    carried = len(streamer.carry)
    for flat, lengths in token_batches(part, p.batch_size):
        stats["tokens_in"] += int(lengths.sum())
        cols = streamer.push(flat, lengths)
        if cols is not None:
            stats["rows"] += write_rows(writer, cols, p.columns())
    moved = stats["tokens_in"] + carried - len(streamer.carry)  # tokens that entered rows here
    if p.mode == "sliding" and last:
        moved += min(len(streamer.carry), max(0, p.max_seq_length - streamer.stride))  # the tail the last window covers
    stats["tokens_out"] = moved
    np.save(tmp / "carry.npy", streamer.carry)
    np.save(tmp / "carry_starts.npy", streamer.carry_starts)
    stats["skip"] = streamer.skip
    return stats


def _record_metrics(m: dict[str, Any], out_splits: dict[str, Any], p: PackParams, store: ShardStore) -> None:
    length = p.max_seq_length
    rows = sum(len(d) for d in out_splits.values())
    m["rows"] = rows
    m["max_seq_length"] = length
    if p.mode == "bfd" and rows:
        pads = sum(m.get(f"{s}_padding_fraction", 0) * len(d) * length for s, d in out_splits.items())
        m["padding_fraction"] = round(pads / (rows * length), 6)
    m["shards_reused"] = store.reused
    m["shards_computed"] = store.computed
    order_metrics(m, ["rows", "max_seq_length", "padding_fraction", "train_rows", "train_tokens_dropped"])


def _output_meta(p: PackParams, art: Artifact, out_splits: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "max_seq_length": p.max_seq_length,
        "mode": p.mode,
        "columns": list(p.columns()),
        "splits": {s: len(d) for s, d in out_splits.items()},
    }
    for k in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", TOKENIZER_DIGEST):
        if k in art.meta:
            meta[k] = art.meta[k]
    if p.export_parquet:
        meta["parquet"] = {s: f"parquet/{s}.parquet" for s in out_splits}
    return meta
