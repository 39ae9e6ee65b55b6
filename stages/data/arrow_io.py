"""Writing the data stages' outputs: a DatasetDict in ``save_to_disk``'s
layout, either from Datasets (:func:`save_dataset_dict`) or in one
sequential pass from streams of Arrow tables (:func:`save_streamed`, fed
e.g. by :func:`kept_rows` of a filtered input); and reading back one Arrow
file a shard wrote (:func:`load_arrow`)."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

#: bytes per file of a saved split, as ``save_to_disk`` shards (its default max_shard_size)
SAVED_FILE_BYTES = 500 * 2**20


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


def _write_split_files(split_dir: Path, template: Any, tables: Iterable[Any]) -> list[Path]:
    """Write the tables into files of about :data:`SAVED_FILE_BYTES` each (at
    least one, holding the schema, for an empty split); return them in order."""
    from datasets.arrow_writer import ArrowWriter

    files: list[Path] = []
    writer, size = None, 0
    for t in tables:
        if writer is None or (size >= SAVED_FILE_BYTES and t.num_rows):
            if writer is not None:
                writer.finalize()
                writer.close()
            files.append(split_dir / f"data-{len(files):05d}.arrow")
            writer = ArrowWriter(features=template.features, path=str(files[-1]), embed_local_files=True)
            size = 0
        if t.num_rows:
            writer.write_table(t)
            size += t.nbytes
    if writer is None:  # no table at all: an empty split still gets a file with the schema
        files.append(split_dir / "data-00000.arrow")
        writer = ArrowWriter(features=template.features, path=str(files[-1]))
    writer.finalize()
    writer.close()
    return files


def _write_split_metadata(split_dir: Path, template: Any, files: list[Path]) -> None:
    """Rename the files as ``save_to_disk`` names them and write its
    ``state.json`` and ``dataset_info.json`` (the template's info)."""
    from datasets.utils.py_utils import asdict  # save_to_disk's (dataclasses.asdict breaks ClassLabel)

    names = []
    for i, f in enumerate(files):
        name = f"data-{i:05d}-of-{len(files):05d}.arrow"
        f.rename(split_dir / name)
        names.append(name)
    state: dict[str, Any] = {
        "_data_files": [{"filename": n} for n in names],
        "_fingerprint": uuid.uuid4().hex,
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": str(template.split) if template.split is not None else None,
    }
    (split_dir / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    info = asdict(template.info)
    (split_dir / "dataset_info.json").write_text(json.dumps({k: info[k] for k in sorted(info)}, indent=2))
