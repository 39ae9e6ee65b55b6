"""Reading token batches from a tokenized dataset and writing packed rows
(fixed-size Arrow lists) to a shard's file."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: Arrow value type of each packed column
COLUMN_TYPES = {"input_ids": "int32", "position_ids": "int32", "labels": "int32", "attention_mask": "int8"}


def row_features(columns: tuple[str, ...], length: int) -> Any:
    """The packed split's features: each column a list of exactly ``length`` values."""
    from datasets import Features, List, Value

    return Features({c: List(Value(COLUMN_TYPES[c]), length=length) for c in columns})


def write_rows(writer: Any, cols: dict[str, Any], columns: tuple[str, ...]) -> int:
    """Write the (n, length) matrices of ``columns``; return n."""
    import pyarrow as pa

    n, length = cols["input_ids"].shape
    if n == 0:
        return 0
    arrays = {}
    for c in columns:
        values = pa.array(cols[c].reshape(-1), pa.int8() if c == "attention_mask" else pa.int32())
        arrays[c] = pa.FixedSizeListArray.from_arrays(values, length)
    writer.write_table(pa.table(arrays))
    return int(n)


def token_batches(ds: Any, batch_size: int) -> Iterator[tuple[Any, Any]]:
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
