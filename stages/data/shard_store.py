"""Finished shards of a data stage, kept under its checkpoint directory, so
that a stage killed midway redoes only the unfinished shards when it is run
again; and what goes into a store's key."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from recipe_runner import Artifact

#: ``write(tmpdir) -> meta``: writes one shard's files into ``tmpdir``
ShardWriter = Callable[[Path], "dict[str, Any] | None"]


def stable_hash(obj: Any) -> str:
    """A digest of a JSON-able value that does not depend on key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def result_params(params: BaseModel, exclude: Collection[str] = ()) -> dict[str, Any]:
    """The parameters that change what a stage computes, as JSON: the fields
    marked as run settings (``recipe_runner.run_setting``) are left out, by the
    function the engine's stage keys leave them out with, and so are the
    top-level fields in ``exclude``."""
    from recipe_runner import split_params

    key, _ = split_params(params)
    return {name: value for name, value in key.items() if name not in exclude}


def artifact_identity(art: Artifact | None) -> dict[str, Any]:
    """What identifies an upstream artifact's content for a shard key: the key
    of the stage that made it when the runner knows it (it says what the
    artifact holds, wherever the run directory is), else its path and the
    sizes and mtimes of the JSON files ``save_to_disk`` writes."""
    if art is None:
        return {}
    if art.fingerprint:
        return {"fingerprint": art.fingerprint}
    ident: dict[str, Any] = {"path": str(art.path)}
    p = Path(art.path)
    stamps = []
    if p.is_dir():
        for f in sorted(p.rglob("*.json")):
            with contextlib.suppress(OSError):
                st = f.stat()
                stamps.append((str(f.relative_to(p)), st.st_size, st.st_mtime_ns))
    ident["files"] = stamps
    return ident


class ShardStore:
    """Finished shards of one stage run, kept under the checkpoint directory.

    ``key`` is everything the shards' content depends on (the parameters
    but the run settings, the input); a store opened with a different key
    starts empty.  A shard is written into a temporary directory and renamed
    into place when complete, so a kill never leaves a half-written shard
    that looks finished.
    """

    def __init__(self, root: Path, key: Any, log: Any = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        digest = stable_hash(key)
        keyfile = self.root / "KEY"
        if keyfile.exists() and keyfile.read_text() != digest:
            if log is not None:
                log.info("checkpoint shards in %s were made with other settings; starting over", self.root)
            for child in self.root.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        for child in self.root.glob(".tmp-*"):  # left by a killed run
            shutil.rmtree(child, ignore_errors=True)
        shutil.rmtree(self.root / ".scratch", ignore_errors=True)
        keyfile.write_text(digest)
        self.log = log  # the stage's logger (None: silent)
        self.reused = 0
        self.computed = 0

    @property
    def scratch(self) -> Path:
        p = self.root / ".scratch"
        p.mkdir(parents=True, exist_ok=True)
        return p

    def path(self, name: str) -> Path:
        return self.root / name

    def done(self, name: str) -> bool:
        return (self.root / name / "meta.json").exists()

    def meta(self, name: str) -> dict[str, Any]:
        meta: dict[str, Any] = json.loads((self.root / name / "meta.json").read_text())
        return meta

    def commit(self, name: str, write: ShardWriter) -> dict[str, Any]:
        """Run ``write(tmpdir) -> meta`` and move the result into place."""
        tmp = self.begin(name)
        try:
            meta = write(tmp) or {}
            self.finish(name, tmp, meta)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(self.root / ".scratch", ignore_errors=True)
        return meta

    def tmp_path(self, name: str) -> Path:
        """A fresh temporary directory name for shard ``name`` (not created; see :meth:`finish`)."""
        return self.root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"

    def begin(self, name: str) -> Path:
        """A fresh temporary directory for shard ``name`` (see :meth:`finish`)."""
        tmp = self.tmp_path(name)
        tmp.mkdir(parents=True)
        return tmp

    def finish(self, name: str, tmp: Path, meta: dict[str, Any]) -> None:
        """Move a shard written into ``tmp`` (by this or a worker process) into place."""
        (tmp / "meta.json").write_text(json.dumps(meta))
        final = self.root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        self.computed += 1

    def get_or_make(self, name: str, write: ShardWriter) -> tuple[Path, dict[str, Any]]:
        """The shard ``name``: reused when finished before, else made with ``write``."""
        if self.done(name):
            self.reused += 1
            return self.path(name), self.meta(name)
        meta = self.commit(name, write)
        return self.path(name), meta
