"""A stage cache shared between machines and teams: a directory, ``file://``
or ``s3://bucket/prefix`` (any fsspec filesystem; S3 through s3fs, with any
S3-compatible store: set ``AWS_ENDPOINT_URL`` for one that is not AWS).

Layout, addressed by the same stage keys as the run directory::

    <root>/<key>/<upload-id>/stage.json, outputs/...   one complete upload
    <root>/<key>/COMPLETE                              {"upload": id, ...}, written last

A reader trusts only an upload that ``COMPLETE`` names, and verifies every
file's size and content digest against its ``stage.json`` before using it,
so a half-written, truncated or tampered entry is never used.  Two teams
pushing the same key at once each write their own upload; either marker
names a complete one."""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
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

    def _marker(self, key: str) -> str:
        return f"{self.root}/{key}/{MARKER}"

    def has(self, key: str) -> bool:
        return bool(self.fs.exists(self._marker(key)))

    def pull(self, store: RunStore, stage: str, key: str) -> bool:
        """Bring a verified copy of ``key``'s output into the run directory;
        False when the cache has none (or only a corrupt one, which is logged)."""
        try:
            marker = json.loads(self.fs.cat_file(self._marker(key)))
        except FileNotFoundError:
            return False
        local = store.tmp_dir / f"pull-{key[:12]}-{uuid.uuid4().hex[:8]}"
        try:
            self.fs.get(f"{self.root}/{key}/{marker['upload']}/", str(local), recursive=True)
            record = json.loads((local / STAGE_RECORD).read_text())
            problems = check_files(local, record)
            if problems or record.get("fingerprint") != key:
                log.warning(
                    "shared cache %s: entry %s is corrupt, not used: %s",
                    self.url,
                    key[:12],
                    problems[0] if problems else "wrong key",
                )
                return False
            store.adopt(stage, key, local)
            log.info("stage %s: pulled from the shared cache %s (%s, verified)", stage, self.url, key[:12])
            return True
        finally:
            shutil.rmtree(local, ignore_errors=True)

    def push(self, store: RunStore, stage: str, key: str) -> None:
        """Upload a committed output under a fresh upload id, then the marker."""
        if self.has(key):
            return
        src = store.committed_dir(stage, key)
        upload = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.fs.put(str(src) + "/", f"{self.root}/{key}/{upload}/", recursive=True)
        record = json.loads((src / STAGE_RECORD).read_text())
        size = sum(f["size"] for f in record.get("files", {}).values())
        marker = {"upload": upload, "stage": stage, "type": record.get("type"), "bytes": size, "pushed": time.time()}
        self.fs.pipe_file(self._marker(key), json.dumps(marker).encode())
        log.info("stage %s: pushed to the shared cache %s (%s)", stage, self.url, key[:12])

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
