"""Reading text files (plain text and source code, optionally gzipped) and
cutting each into documents."""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path
from typing import Any

from recipe_runner import StageError

from .remote import RemoteFile
from .specs import FilesSource
from .writer import DocumentWriter

_BLANK_LINES = re.compile(r"\n(?:[ \t\r\f\v]*\n)+")


def read_text_files(
    files: list[Path | RemoteFile], spec: FilesSource, writer: DocumentWriter, stats: dict[str, Any]
) -> None:
    """Write the documents of each file (local, or an object read through
    fsspec: the same decoding and splitting); undecodable, empty and too long
    ones are counted in ``stats`` (or are errors, as ``on_decode_error`` says)."""
    if spec.keep_columns:
        raise StageError(
            f"source {writer.source!r}: keep_columns applies to JSON/Parquet/CSV/hub data, and "
            f"{files[0]} is read as text (set 'format' if it is structured data)"
        )
    for path in files:
        text = _decoded_text(path, spec, writer.source, stats)
        if text is None:
            continue
        if not text.strip():
            stats["skipped_empty_files"] += 1
            continue
        docs = split_text(text, spec)
        if spec.max_chars is not None:
            keep = [d for d in docs if len(d) <= spec.max_chars]
            stats["skipped_long_documents"] += len(docs) - len(keep)
            docs = keep
        stats["files"] += 1
        writer.add(docs)


def split_text(text: str, spec: FilesSource) -> list[str]:
    """Cut one file's text into documents as ``spec.split_by`` says."""
    if spec.split_by == "file":
        return [text] if text.strip() else []
    if spec.split_by == "blank_lines":
        pieces = _BLANK_LINES.split(text)
    elif spec.split_by == "lines":
        pieces = text.splitlines()
    elif spec.split_by == "separator":
        pieces = text.split(spec.separator or "")
    else:
        pieces = re.split(spec.separator or "", text)
    return [piece.strip("\r\n") for piece in pieces if piece is not None and piece.strip()]


def _decoded_text(path: Path | RemoteFile, spec: FilesSource, source: str, stats: dict[str, Any]) -> str | None:
    """The file's text, or None for a file skipped as undecodable (counted in ``stats``)."""
    try:
        raw = path.read_bytes(spec.storage_options) if isinstance(path, RemoteFile) else _read_bytes(path)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # a corrupt .gz
        if spec.on_decode_error == "error":
            raise StageError(f"cannot decompress {path}: {e}") from e
        _skip_undecodable(path, stats)
        return None
    except OSError as e:
        raise StageError(f"cannot read {path}: {e}") from e
    try:
        return raw.decode(spec.encoding, errors="replace" if spec.on_decode_error == "replace" else "strict")
    except LookupError as e:
        raise StageError(f"source {source!r}: unknown encoding {spec.encoding!r}") from e
    except UnicodeDecodeError as e:
        if spec.on_decode_error == "error":
            raise StageError(
                f"{path} is not valid {spec.encoding} (byte {e.start}: {e.reason}); fix the file, set 'encoding', "
                "or set on_decode_error to 'skip' or 'replace'"
            ) from e
        _skip_undecodable(path, stats)
        return None


def _skip_undecodable(path: Path | RemoteFile, stats: dict[str, Any]) -> None:
    stats["skipped_undecodable_files"] += 1
    stats.setdefault("_skipped", []).append(str(path))


def _read_bytes(path: Path) -> bytes:
    if path.suffix.lower() == ".gz":
        with gzip.open(path, "rb") as f:
            return f.read()
    return path.read_bytes()
