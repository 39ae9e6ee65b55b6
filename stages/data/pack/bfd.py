"""Best-fit-decreasing bin packing of whole documents (TRL's
``pack_dataset``), padded to the row length, with labels and per-document
position ids."""

from __future__ import annotations

from typing import Any


def pack_bfd(flat: Any, lengths: Any, length: int, overflow: str, pad: int) -> tuple[dict[str, Any] | None, int]:
    """Best-fit-decreasing packing of one batch of documents with TRL's
    ``pack_dataset``, then padding to ``length``; returns the rows' columns
    (None for no tokens) and the number of real tokens in them."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Dataset
    from datasets.table import InMemoryTable
    from trl.data_utils import pack_dataset

    if not len(lengths) or not int(lengths.sum()):
        return None, 0
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
    tab = pa.table({"input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int32()))})
    ds = Dataset(InMemoryTable(tab))
    packed = pack_dataset(
        ds,
        length,
        strategy="bfd_split" if overflow == "split" else "bfd",
        map_kwargs={"batch_size": len(ds), "keep_in_memory": True},
    )
    t = packed.with_format("arrow")[:]
    ids = t.column("input_ids").combine_chunks()
    seq = t.column("seq_lengths").combine_chunks()
    values = pc.list_flatten(ids).to_numpy(zero_copy_only=False).astype(np.int32)
    row_len = pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    row_offsets = np.concatenate(([0], np.cumsum(row_len)))
    seq_flat = pc.list_flatten(seq).to_numpy(zero_copy_only=False).astype(np.int64)
    return pad_bins(values, row_offsets, seq_flat, length, pad), int(row_offsets[-1])


def pad_bins(values: Any, row_offsets: Any, seq_lengths_flat: Any, length: int, pad: int) -> dict[str, Any]:
    """Variable-length packed rows -> padded (n, length) matrices."""
    import numpy as np

    n = len(row_offsets) - 1
    row_len = np.diff(row_offsets)
    total = int(row_offsets[-1])
    ids = np.full((n, length), pad, dtype=np.int32)
    r = np.repeat(np.arange(n), row_len)
    c = np.arange(total) - np.repeat(row_offsets[:-1], row_len)
    ids[r, c] = values
    mask = np.zeros((n, length), dtype=np.int8)
    mask[r, c] = 1
    # position ids per packed document; the padding is a run of its own (0, 1, ...)
    seq_start_flat = np.concatenate(([0], np.cumsum(seq_lengths_flat)[:-1]))
    pos_flat = np.arange(total) - np.repeat(seq_start_flat, seq_lengths_flat)
    pos = np.broadcast_to(np.arange(length, dtype=np.int32), (n, length)) - row_len[:, None].astype(np.int32)
    pos = np.maximum(pos, 0).astype(np.int32)
    pos[r, c] = pos_flat
    starts = np.zeros((n, length), dtype=bool)
    starts[r, c] = pos_flat == 0
    labels = np.where(mask.astype(bool) & ~starts, ids, -100).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": pos}
