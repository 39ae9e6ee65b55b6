"""Content digests of files and directories (xxh3-128: fast enough to hash a
model directory at disk speed), with a cache keyed by what changes when a
file's bytes do (size, mtime, ctime, inode), so an unchanged 15 GB model
directory is not re-hashed on every run, and an edit that restores the mtime
is still seen (the ctime changes)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import xxhash

CHUNK = 1 << 22


def file_digest(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def stat_signature(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def walk_files(root: Path) -> Iterator[Path]:
    """Regular files under ``root`` (or ``root`` itself), sorted, without following links out of it."""
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_file():
                yield p


class DigestCache:
    """``path -> (stat signature, digest)``, kept in a JSON file."""

    def __init__(self, path: Path | None, writable: bool = True):
        self.path = path if writable else None
        self.entries: dict[str, list[Any]] = {}
        self.dirty = False
        self.hits = self.misses = 0  # digests served from the cache / computed from the bytes
        if path is not None:
            try:
                self.entries = json.loads(path.read_text())
            except (OSError, ValueError):
                self.entries = {}

    def digest(self, path: Path) -> str:
        key = str(path.resolve())
        sig = stat_signature(path)
        hit = self.entries.get(key)
        if hit is not None and hit[0] == sig:
            self.hits += 1
            return str(hit[1])
        self.misses += 1
        value = file_digest(path)
        self.entries[key] = [sig, value]
        self.dirty = True
        return value

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.entries))
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError:
            pass  # a cache that cannot be written only costs time


def tree_files(root: Path, cache: DigestCache) -> dict[str, dict[str, Any]]:
    """``relative path -> {size, digest}`` for every file under ``root`` (or ``root`` itself)."""
    base = root if root.is_dir() else root.parent
    return {
        p.relative_to(base).as_posix(): {"size": p.stat().st_size, "digest": cache.digest(p)} for p in walk_files(root)
    }


def tree_digest(files: dict[str, dict[str, Any]]) -> str:
    """One digest of a directory's content: its relative paths and their digests, not where it is."""
    h = xxhash.xxh3_128()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + files[rel]["digest"].encode() + b"\n")
    return h.hexdigest()


def path_digest(path: Path, cache: DigestCache) -> str:
    """The content digest of a local file or directory (location-independent)."""
    if path.is_file():
        return cache.digest(path)
    return tree_digest(tree_files(path, cache))
