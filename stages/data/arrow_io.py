"""Writing the data stages' outputs: a DatasetDict in ``save_to_disk``'s
layout, either from Datasets (:func:`save_dataset_dict`) or in one
sequential pass from streams of Arrow tables (:func:`save_streamed`, fed
e.g. by :func:`kept_rows` of a filtered input); and reading back one Arrow
file a shard wrote (:func:`load_arrow`).

The bytes written depend on the rows only, never on how they were chunked on
the way (shards, batches, worker count): :func:`save_streamed` cuts the rows
into groups by a rule that looks at the rows alone and writes each from
buffers of its own (:func:`canonical_groups`), and every split's ``state.json`` gets a
fingerprint computed from its data files (``save_to_disk`` writes a random
one), so two runs that produce the same rows produce the same files."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

#: bytes per file of a saved split, as ``save_to_disk`` shards (its default max_shard_size)
SAVED_FILE_BYTES = 500 * 2**20
#: rows are written in groups of this many record batches and at most GROUP_BYTES bytes (where single
#: rows allow), each group from buffers of its own (memory stays bounded)
GROUP_BATCHES = 16
GROUP_BYTES = 64 * 2**20


def save_dataset_dict(splits: Mapping[str, Any], path: Path, num_proc: int | None = None) -> None:
    """``DatasetDict(splits).save_to_disk(path)``, replacing what is there; an
    empty split gets one (empty) file, so that it can be loaded back."""
    from datasets import DatasetDict

    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    kwargs: dict[str, Any] = {}
    if any(len(d) == 0 for d in splits.values()):
        # datasets writes no shard for an empty split, and then cannot load it back
        num_shards = {s: 1 for s, d in splits.items() if len(d) == 0}
        num_shards.update({s: max(1, -(-int(d.data.nbytes) // SAVED_FILE_BYTES)) for s, d in splits.items() if len(d)})
        kwargs["num_shards"] = num_shards
    DatasetDict(splits).save_to_disk(str(path), num_proc=num_proc if num_proc and num_proc > 1 else None, **kwargs)
    for split in splits:
        _set_content_fingerprint(path / split)


def kept_rows(table: Any, keep: Any, chunk_rows: int = 16_384, chunk_bytes: int = 64 * 2**20) -> Iterator[Any]:
    """The rows of ``table`` where the boolean array ``keep`` is true, as a
    stream of small tables (at most ``chunk_rows`` rows and, where single rows
    allow, about ``chunk_bytes`` bytes each: memory stays bounded)."""
    import pyarrow as pa

    a = 0
    while a < table.num_rows:
        part = table.slice(a, chunk_rows)
        while part.num_rows > 1 and part.nbytes > chunk_bytes:  # big documents: fewer rows per piece
            part = table.slice(a, part.num_rows // 2)
        k = keep[a : a + part.num_rows]
        a += part.num_rows
        yield part if k.all() else part.filter(pa.array(k))


def save_streamed(splits: Mapping[str, tuple[Any, Iterable[Any]]], path: Path) -> dict[str, Any]:
    """Save ``{split: (template Dataset, stream of pyarrow tables)}`` as a
    DatasetDict at ``path`` (``save_to_disk``'s layout, so ``load_from_disk``
    reads it) and return the saved splits, memory-mapped.

    The tables are written once, sequentially, with the template's features
    and info: no per-row gather (``Dataset.select(...).save_to_disk``) and no
    second copy."""
    from datasets import load_from_disk

    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    for split, (template, tables) in splits.items():
        split_dir = path / split
        split_dir.mkdir()
        files = _write_split_files(split_dir, template, tables)
        _write_split_metadata(split_dir, template, files)
    (path / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    saved = load_from_disk(str(path))
    return {s: saved[s] for s in splits}


def load_arrow(path: Path) -> Any:
    """A Dataset memory-mapped from one Arrow file a shard wrote."""
    from datasets import Dataset

    return Dataset.from_file(str(path))


def canonical_groups(tables: Iterable[Any], rows: int, max_bytes: int = GROUP_BYTES) -> Iterator[tuple[Any, int]]:
    """The rows of ``tables`` again, as ``(table, bytes)`` groups of ``rows``
    rows, or fewer where the next row would take a group past ``max_bytes``
    (at least one row each), each copied into buffers of its own: where a
    group ends, and the buffers it is written from, depend on the rows alone,
    not on how ``tables`` chunked them (a writer given a slice of a larger
    buffer pads the record batches it writes with the bytes that follow)."""
    import itertools

    import numpy as np
    import pyarrow as pa

    pending: Any = None
    for t in itertools.chain(tables, [None]):  # None: the end of the stream
        if t is not None and t.num_rows:
            pending = t if pending is None else pa.concat_tables([pending, t])
        if pending is None or (t is not None and not t.num_rows):
            continue
        sizes = row_bytes(pending)
        ranges = row_ranges(np.cumsum(sizes, dtype=np.int64), rows, max_bytes)
        final = ranges if t is None else ranges[:-1]  # the last group may still grow with the next table
        for a, b in final:
            group = pending.slice(a, b - a)
            contiguous = [pa.concat_arrays(column.chunks) for column in group.columns]
            yield pa.Table.from_arrays(contiguous, schema=group.schema), int(sizes[a:b].sum())
        pending = pending.slice(ranges[-1][0]) if t is not None else None


def row_ranges(cum: Any, max_rows: int, max_bytes: int) -> list[tuple[int, int]]:
    """Contiguous ``(start, end)`` ranges over rows whose cumulated sizes are
    ``cum``: each as long as ``max_rows`` rows and ``max_bytes`` bytes allow
    (at least one row), greedily from the first row."""
    import numpy as np

    ranges: list[tuple[int, int]] = []
    a, n = 0, len(cum)
    while a < n:
        base = int(cum[a - 1]) if a else 0
        b = int(np.searchsorted(cum, base + max_bytes, side="right"))
        b = min(max(b, a + 1), a + max_rows, n)
        ranges.append((a, b))
        a = b
    return ranges


def row_bytes(table: Any) -> Any:
    """Bytes of each row of ``table``, from its values alone (not its chunks):
    the data of its string and list columns plus the width of the others."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    total = np.zeros(table.num_rows, dtype=np.int64)
    for column in table.columns:
        t = column.type
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
            total += pc.binary_length(column).fill_null(0).to_numpy().astype(np.int64)
        elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            width = _fixed_width(t.value_type)
            total += pc.list_value_length(column).fill_null(0).to_numpy().astype(np.int64) * width
        else:
            total += _fixed_width(t)
    return total


def _fixed_width(t: Any) -> int:
    try:
        return max(1, int(t.bit_width) // 8)
    except ValueError:  # a nested or variable-width type: counted as a pointer's worth
        return 8


def _write_split_files(split_dir: Path, template: Any, tables: Iterable[Any]) -> list[Path]:
    """Write the tables into files of about :data:`SAVED_FILE_BYTES` each (at
    least one, holding the schema, for an empty split); return them in order."""
    from datasets import config
    from datasets.arrow_writer import ArrowWriter, get_arrow_writer_batch_size_from_features

    rows = get_arrow_writer_batch_size_from_features(template.features) or config.DEFAULT_MAX_BATCH_SIZE
    files: list[Path] = []
    writer, size = None, 0
    for group, nbytes in canonical_groups(tables, GROUP_BATCHES * rows):
        if writer is None or size >= SAVED_FILE_BYTES:
            if writer is not None:
                writer.finalize()
                writer.close()
            files.append(split_dir / f"data-{len(files):05d}.arrow")
            writer = ArrowWriter(
                features=template.features, path=str(files[-1]), embed_local_files=True, writer_batch_size=rows
            )
            size = 0
        writer.write_table(group)  # as record batches of ``rows`` rows
        size += nbytes
    if writer is None:  # no rows at all: an empty split still gets a file with the schema
        files.append(split_dir / "data-00000.arrow")
        writer = ArrowWriter(features=template.features, path=str(files[-1]))
    writer.finalize()
    writer.close()
    return files


def _write_split_metadata(split_dir: Path, template: Any, files: list[Path]) -> None:
    """Rename the files as ``save_to_disk`` names them and write its
    ``state.json`` (with a fingerprint of the files' content) and
    ``dataset_info.json`` (the template's info)."""
    from datasets.utils.py_utils import asdict  # save_to_disk's (dataclasses.asdict breaks ClassLabel)

    names = []
    for i, f in enumerate(files):
        name = f"data-{i:05d}-of-{len(files):05d}.arrow"
        f.rename(split_dir / name)
        names.append(name)
    state: dict[str, Any] = {
        "_data_files": [{"filename": n} for n in names],
        "_fingerprint": content_fingerprint([split_dir / n for n in names]),
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": str(template.split) if template.split is not None else None,
    }
    _write_state(split_dir, state)
    info = asdict(template.info)
    (split_dir / "dataset_info.json").write_text(json.dumps({k: info[k] for k in sorted(info)}, indent=2))


def content_fingerprint(files: Iterable[Path]) -> str:
    """A digest of the files' bytes, in the 16 hex digits of a ``datasets`` fingerprint."""
    import xxhash

    h = xxhash.xxh3_64()
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def _set_content_fingerprint(split_dir: Path) -> None:
    """Replace the random ``_fingerprint`` ``save_to_disk`` wrote by one of the split's data files."""
    state = json.loads((split_dir / "state.json").read_text())
    state["_fingerprint"] = content_fingerprint(split_dir / f["filename"] for f in state["_data_files"])
    _write_state(split_dir, state)


def _write_state(split_dir: Path, state: dict[str, Any]) -> None:
    (split_dir / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
