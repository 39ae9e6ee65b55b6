"""Reading structured files (JSON Lines / JSON, Parquet, CSV / TSV,
optionally gzipped) with the ``datasets`` builders."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Any

from recipe_runner import StageError

from .specs import FilesSource
from .writer import DocumentWriter, write_columnar


def read_structured(
    files: list[Path], fmt: str, spec: FilesSource, writer: DocumentWriter, stats: dict[str, Any], scratch: Path
) -> None:
    """Write the text column of ``files`` (all of format ``fmt``); gzipped
    files are decompressed into ``scratch`` first, empty files counted."""
    plain = _plain_files(files, stats, scratch)
    if not plain:
        return
    kwargs: dict[str, Any] = {}
    if fmt == "csv" and all(p.lower().endswith(".tsv") for p in plain):
        kwargs["sep"] = "\t"
    try:
        ds = _load(fmt, plain, scratch, kwargs)
    except Exception as e:  # datasets' builders raise many types: find the file to name
        culprit = _first_unreadable(fmt, plain, scratch, kwargs) if len(plain) > 1 else None
        names = culprit or ", ".join(str(f) for f in files[:5])
        raise StageError(f"cannot read {fmt} data from {names}: {type(e).__name__}: {e}") from e
    what = ", ".join(str(f) for f in files[:3]) + (" ..." if len(files) > 3 else "")
    write_columnar(ds, spec, writer, stats, what=what)
    stats["files"] += len(plain)


def _plain_files(files: list[Path], stats: dict[str, Any], scratch: Path) -> list[str]:
    """The files to read: each '.gz' decompressed once (every reader then
    sees a plain file), empty files left out and counted."""
    plain: list[str] = []
    for i, f in enumerate(files):
        if f.suffix.lower() == ".gz":
            target = scratch / f"gunzip-{i}-{f.name[:-3]}"
            try:
                with gzip.open(f, "rb") as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 16 * 2**20)
            except (OSError, EOFError) as e:
                raise StageError(f"cannot decompress {f}: {e}") from e
            plain.append(str(target))
        elif f.stat().st_size == 0:
            stats["skipped_empty_files"] += 1
        else:
            plain.append(str(f))
    return plain


def _load(fmt: str, paths: list[str], scratch: Path, kwargs: dict[str, Any]) -> Any:
    import datasets

    return datasets.load_dataset(fmt, data_files=paths, split="train", cache_dir=str(scratch / "hf-cache"), **kwargs)


def _first_unreadable(fmt: str, paths: list[str], scratch: Path, kwargs: dict[str, Any]) -> str | None:
    """The first of ``paths`` the builder cannot read on its own."""
    for p in paths:
        try:
            _load(fmt, [p], scratch, kwargs)
        except Exception:  # any failure names the file
            return p
    return None
