"""A stage cache shared between machines and teams: a directory, ``file://``
or ``s3://bucket/prefix`` (any fsspec filesystem; S3 through s3fs, with any
S3-compatible store: set ``AWS_ENDPOINT_URL`` for one that is not AWS).

Layout, addressed by the same stage keys as the run directory::

    <root>/<key>/<upload-id>/stage.json, outputs/...   one complete upload
    <root>/<key>/COMPLETE                              {"upload": id, "outputs": digests, ...},
                                                       written aside and moved into place last

A reader trusts only an upload that ``COMPLETE`` names, and verifies every
file's size and content digest against its ``stage.json`` before using it,
so a half-written, truncated or tampered entry is never used.  Two teams
pushing the same key at once each write their own upload; either marker
names a complete one.  The marker also holds the outputs' digests, so
`recipe plan` and `recipe status` can key downstream stages without
downloading anything."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from .store import STAGE_RECORD, RunStore, check_files

log = logging.getLogger("recipe_runner")

MARKER = "COMPLETE"


class SharedCache:
    def __init__(self, url: str):
        import fsspec

        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.local = "file" in protocols
        self.corrupt: set[str] = set()  # keys whose entry a pull found corrupt: the next push replaces it

    def _marker(self, key: str) -> str:
        return f"{self.root}/{key}/{MARKER}"

    def has(self, key: str) -> bool:
        return bool(self.fs.exists(self._marker(key)))

    def marker(self, key: str) -> dict[str, Any] | None:
        """The complete entry's marker (one small read, nothing downloaded), None without one."""
        try:
            data = json.loads(self.fs.cat_file(self._marker(key)))
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) and "upload" in data else None

    def output_digests(self, key: str, marker: dict[str, Any] | None = None) -> dict[str, str] | None:
        """The content digests of an entry's outputs (what downstream keys use),
        from its marker, or for an entry pushed without them, its stage.json;
        None when there is no entry or they cannot be read."""
        marker = marker or self.marker(key)
        if marker is None:
            return None
        if isinstance(marker.get("outputs"), dict):
            return {str(k): str(v) for k, v in marker["outputs"].items()}
        try:
            record = json.loads(self.fs.cat_file(f"{self._upload(key, marker)}/{STAGE_RECORD}"))
        except (FileNotFoundError, ValueError):
            return None
        return RunStore.output_digests(record) if record.get("fingerprint") == key else None

    def _upload(self, key: str, marker: dict[str, Any]) -> str:
        return f"{self.root}/{key}/{marker['upload']}"

    def _where(self, path: str) -> str:
        """A path of the cache as the user names it (a local path, or a URL)."""
        return path if self.local else str(self.fs.unstrip_protocol(path))

    def _check(self, key: str, marker: dict[str, Any], local: Path) -> tuple[dict[str, Any] | None, list[str]]:
        """A downloaded (or, for a local cache, the stored) upload against its
        stage.json: the record and each problem, naming the file in the cache."""
        where = self._where(self._upload(key, marker))
        try:
            record = json.loads((local / STAGE_RECORD).read_text())
        except (OSError, ValueError):
            return None, [f"{where}/{STAGE_RECORD}: missing or unreadable"]
        problems = [where + p[len(str(local)) :] for p in check_files(local, record)]
        if record.get("fingerprint") != key:
            problems.append(f"{where}/{STAGE_RECORD}: recorded for key {str(record.get('fingerprint'))[:12]}")
        return record, problems

    def verify(self, key: str) -> list[str] | None:
        """Every file of the entry against its size and content digest: the
        problems (empty when intact), None when the cache has no entry."""
        marker = self.marker(key)
        if marker is None:
            return None
        if self.local:  # checked in place
            return self._check(key, marker, Path(self._upload(key, marker)))[1]
        with tempfile.TemporaryDirectory(prefix="recipe-verify-") as tmp:
            local = Path(tmp) / "entry"
            self.fs.get(self._upload(key, marker) + "/", str(local), recursive=True)
            return self._check(key, marker, local)[1]

    def pull(self, store: RunStore, stage: str, key: str) -> bool:
        """Bring a verified copy of ``key``'s output into the run directory;
        False when the cache has none (or only a corrupt one, which is logged)."""
        marker = self.marker(key)
        if marker is None:
            return False
        local = store.tmp_dir / f"pull-{key[:12]}-{uuid.uuid4().hex[:8]}"
        try:
            self.fs.get(self._upload(key, marker) + "/", str(local), recursive=True)
            _, problems = self._check(key, marker, local)
            if problems:
                self.corrupt.add(key)
                log.warning("shared cache %s: entry %s is corrupt, not used: %s", self.url, key[:12], problems[0])
                return False
            store.adopt(stage, key, local)
            log.debug("stage %s: pulled from the shared cache %s (%s, verified)", stage, self.url, key[:12])
            return True
        finally:
            shutil.rmtree(local, ignore_errors=True)

    def push(self, store: RunStore, stage: str, key: str) -> bool:
        """Upload a committed output under a fresh upload id, then publish the
        marker naming it (written aside, then moved into place, so a reader
        never sees half a marker); a concurrent push of the same key wins or
        loses the marker whole, and either names a complete upload.  An entry
        a pull found corrupt is replaced the same way, its upload then removed.
        False when the cache already had the key."""
        replaced = self.marker(key) if key in self.corrupt else None
        if replaced is None and self.has(key):
            return False
        src = store.committed_dir(stage, key)
        upload = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.fs.put(str(src) + "/", f"{self.root}/{key}/{upload}/", recursive=True)
        record = json.loads((src / STAGE_RECORD).read_text())
        marker = {
            "upload": upload,
            "stage": stage,
            "type": record.get("type"),
            "bytes": sum(f["size"] for f in record.get("files", {}).values()),
            "pushed": time.time(),
            "outputs": RunStore.output_digests(record),
        }
        aside = f"{self.root}/{key}/{MARKER}.{upload}"
        self.fs.pipe_file(aside, json.dumps(marker).encode())
        self.fs.mv(aside, self._marker(key))
        if replaced is not None:
            self.corrupt.discard(key)
            self.fs.rm(self._upload(key, replaced), recursive=True)
            log.info("shared cache %s: the corrupt entry %s was replaced", self.url, key[:12])
        log.debug("stage %s: pushed to the shared cache %s (%s)", stage, self.url, key[:12])
        return True

    def entries(self) -> list[dict[str, Any]]:
        """Every complete entry: key, stage, type, bytes, pushed (epoch seconds)."""
        out = []
        for path in self.fs.glob(f"{self.root}/*/{MARKER}"):
            key = path.rstrip("/").split("/")[-2]
            try:
                marker = json.loads(self.fs.cat_file(path))
            except (OSError, ValueError):
                continue
            out.append({"key": key, **marker})
        return sorted(out, key=lambda e: e.get("pushed", 0))

    def gc(self, older_than_s: float | None = None, max_bytes: int | None = None) -> list[dict[str, Any]]:
        """Delete entries older than ``older_than_s``, then the oldest until the
        total is at most ``max_bytes``; the marker goes first, so no reader
        ever sees half an entry."""
        entries, removed = self.entries(), []
        now = time.time()
        total = sum(e.get("bytes", 0) for e in entries)
        for e in entries:
            too_old = older_than_s is not None and now - e.get("pushed", now) > older_than_s
            too_big = max_bytes is not None and total > max_bytes
            if too_old or too_big:
                self.fs.rm(self._marker(e["key"]))
                self.fs.rm(f"{self.root}/{e['key']}", recursive=True)
                total -= e.get("bytes", 0)
                removed.append(e)
        return removed
