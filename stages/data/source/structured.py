"""Reading structured files (JSON Lines / JSON, Parquet, CSV / TSV,
optionally gzipped) with the ``datasets`` builders.  Objects that URL
entries matched go through the same builders, streamed: the builder opens
each through fsspec and reads it as it parses (JSON in chunks, Parquet by
row groups); a gzipped one is first decompressed into the scratch
directory, as a local one is."""

from __future__ import annotations

import functools
import gzip
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from recipe_runner import StageError

from .remote import RemoteFile, is_url
from .specs import FilesSource
from .writer import DocumentWriter, write_columnar

InputFile = Path | RemoteFile


def read_structured(
    files: list[InputFile], fmt: str, spec: FilesSource, writer: DocumentWriter, stats: dict[str, Any], scratch: Path
) -> None:
    """Write the text column of ``files`` (all of format ``fmt``); gzipped
    files are decompressed into ``scratch`` first, empty files counted;
    with a URL among them, the builder streams (errors then surface while
    the rows are written)."""
    plain = _plain_files(files, spec, stats, scratch)
    if not plain:
        return
    kwargs: dict[str, Any] = {}
    if fmt == "csv" and all(p.lower().endswith(".tsv") for p in plain):
        kwargs["sep"] = "\t"
    if any(is_url(p) for p in plain):
        kwargs.update(streaming=True, storage_options=dict(spec.storage_options))
        if fmt == "parquet":
            kwargs["fragment_scan_options"] = _row_group_reads()
    what = ", ".join(str(f) for f in files[:3]) + (" ..." if len(files) > 3 else "")
    try:
        ds = _load(fmt, list(plain), scratch, kwargs)
        if kwargs.get("streaming"):
            write_columnar(ds, spec, writer, stats, what=what)
    except StageError:
        raise
    except Exception as e:  # datasets' builders raise many types: find the file to name
        raise _unreadable(fmt, plain, scratch, kwargs, e, spec) from e
    if not kwargs.get("streaming"):
        write_columnar(ds, spec, writer, stats, what=what)
    stats["files"] += len(plain)


def _plain_files(
    files: list[InputFile], spec: FilesSource, stats: dict[str, Any], scratch: Path
) -> dict[str, InputFile]:
    """The files to read (``{plain file or URL: the file named}``): each
    '.gz' decompressed once (every reader then sees a plain file), empty
    files left out and counted."""
    plain: dict[str, InputFile] = {}
    for i, f in enumerate(files):
        if f.suffix.lower() == ".gz":
            target = scratch / f"gunzip-{i}-{f.name[:-3]}"
            try:
                with _open_gzip(f, spec) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 16 * 2**20)
            except (OSError, EOFError) as e:
                raise StageError(f"cannot decompress {f}: {e}") from e
            plain[str(target)] = f
        elif isinstance(f, RemoteFile):
            if f.size == 0:
                stats["skipped_empty_files"] += 1
            else:
                plain[f.url] = f
        elif f.stat().st_size == 0:
            stats["skipped_empty_files"] += 1
        else:
            plain[str(f)] = f
    return plain


def _row_group_reads() -> Any:
    """Parquet scan options that fetch a streamed object's row groups as they
    are read, instead of Arrow's default pre-buffering, which coalesces the
    whole file into one read of up to 32 MiB before the first row; the rows
    are the same."""
    import pyarrow.dataset as pads

    return pads.ParquetFragmentScanOptions(pre_buffer=False)


def _open_gzip(f: InputFile, spec: FilesSource) -> Any:
    """A gzipped file (or object, streamed through fsspec) opened for reading its decompressed bytes."""
    return f.open(spec.storage_options, "gzip") if isinstance(f, RemoteFile) else gzip.open(f, "rb")


def _unreadable(
    fmt: str, plain: dict[str, InputFile], scratch: Path, kwargs: dict[str, Any], e: Exception, spec: FilesSource
) -> StageError:
    """The error for files the builder could not read: the first file it
    cannot read on its own, and for JSON the line where it stops being valid."""
    culprit = _first_unreadable(fmt, list(plain), scratch, kwargs) if len(plain) > 1 else next(iter(plain))
    if culprit is None:
        names = ", ".join(str(f) for f in list(plain.values())[:5])
        return StageError(f"cannot read {fmt} data from {names}: {type(e).__name__}: {e}")
    named = plain[culprit]
    opener = functools.partial(named.open, spec.storage_options) if isinstance(named, RemoteFile) else None
    where = json_error_location(Path(culprit), opener) if fmt == "json" else None
    if where is not None:
        return StageError(f"cannot read json data: {plain[culprit]}:{where}")
    return StageError(f"cannot read {fmt} data from {plain[culprit]}: {type(e).__name__}: {e}")


def json_error_location(path: Path, open_file: Callable[[], IO[bytes]] | None = None) -> str | None:
    """Where a JSON Lines or JSON file stops being valid: ``'<line>:<column>:
    <what>'``, or None when every line is a JSON object (JSON Lines) or the
    file is one valid JSON document.  A file whose first line is an object on
    its own is read as JSON Lines, line by line (memory stays bounded);
    otherwise as one JSON document.  ``open_file`` opens it (default: the local file at ``path``)."""

    def opener() -> IO[bytes]:
        return open_file() if open_file is not None else open(path, "rb")

    if _first_line_is_object(opener):
        with opener() as f:
            for number, raw in enumerate(f, 1):
                problem = _json_line_problem(raw) if raw.strip() else None
                if problem is not None:
                    return f"{number}:{problem}"
        return None
    try:
        with opener() as f:
            json.loads(f.read())
    except UnicodeDecodeError as e:
        return f"1:1: not valid UTF-8 (byte {e.start})"
    except json.JSONDecodeError as e:
        return f"{e.lineno}:{e.colno}: {e.msg}"
    return None


def _json_line_problem(raw: bytes) -> str | None:
    """What is wrong with one JSON Lines line (``'<column>: <what>'``), or None."""
    try:
        value = json.loads(raw.rstrip(b"\r\n"))
    except UnicodeDecodeError as e:
        return f"{e.start + 1}: not valid UTF-8"
    except json.JSONDecodeError as e:
        return f"{e.colno}: {e.msg}"
    return None if isinstance(value, dict) else f"1: a JSON {type(value).__name__}, not an object"


def _first_line_is_object(opener: Callable[[], IO[bytes]]) -> bool:
    with opener() as f:
        for raw in f:
            if raw.strip():
                return _json_line_problem(raw) is None
    return False


def _load(fmt: str, paths: list[str], scratch: Path, kwargs: dict[str, Any]) -> Any:
    import datasets

    return datasets.load_dataset(fmt, data_files=paths, split="train", cache_dir=str(scratch / "hf-cache"), **kwargs)


def _first_unreadable(fmt: str, paths: list[str], scratch: Path, kwargs: dict[str, Any]) -> str | None:
    """The first of ``paths`` the builder cannot read on its own."""
    for p in paths:
        try:
            ds = _load(fmt, [p], scratch, kwargs)
            if kwargs.get("streaming"):  # a streamed file fails as it is read
                for _ in ds.with_format("arrow").iter(batch_size=10_000):
                    pass
        except Exception:  # any failure names the file
            return p
    return None
