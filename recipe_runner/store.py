"""The run directory: committed stage outputs keyed by fingerprint, in-stage
checkpoints that survive crashes, logs, the manifest, and the run lock.

Layout under ``WORKDIR/RECIPE_NAME/``::

    stages/<stage>-<fp12>/          committed output (stage.json written last,
                                    then the directory renamed into place)
    tmp/<stage>-<fp12>/             a stage being written (discarded on retry)
    checkpoints/<stage>-<fp12>/     in-stage checkpoints, kept until commit
    checkpoints/<stage>-<fp12>.key.json  the key they were made under
    logs/<stage>.log                per-stage log
    manifest.json                   the last run's manifest
    .lock                           held (flock) while a run writes here
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import IO, Any

from .artifacts import Artifact
from .digests import DigestCache, file_digest, tree_digest, tree_files
from .errors import RunError

STAGE_RECORD = "stage.json"
#: beside a checkpoint dir: the key its checkpoints were made under (see recipe_runner.elastic)
CHECKPOINT_KEY_SUFFIX = ".key.json"


def _key(stage: str, fingerprint: str) -> str:
    return f"{stage}-{fingerprint[:12]}"


def world_size() -> int:
    """How many processes `accelerate launch` / torchrun started (1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE") or "1")


def under_launcher() -> bool:
    """This process was started by torchrun / accelerate launch / srun (it must not launch again)."""
    return "LOCAL_RANK" in os.environ or world_size() > 1


def process_rank() -> int:
    """This process's rank under `accelerate launch` / torchrun (0 otherwise)."""
    return int(os.environ.get("RANK") or "0") if world_size() > 1 else 0


def describe_outputs(stage_dir: Path, outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``files``: size and digest of every file under ``stage_dir``; ``outputs``:
    each output with the digest of its content (what downstream keys use)."""
    files = tree_files(stage_dir, DigestCache(None))
    described = {}
    for name, out in outputs.items():
        prefix = out["path"].rstrip("/")
        mine = {
            rel[len(prefix) + 1 :] or Path(rel).name: f
            for rel, f in files.items()
            if rel == prefix or rel.startswith(prefix + "/")
        }
        described[name] = dict(out, digest=tree_digest(mine))
    return {"files": files, "outputs": described}


def check_files(stage_dir: Path, record: dict[str, Any], full: bool = True) -> list[str]:
    """Every file a stage record lists, against its size (and, with ``full``, its content digest)."""
    problems = []
    for rel, info in record.get("files", {}).items():
        path = stage_dir / rel
        try:
            size = path.stat().st_size
        except OSError:
            problems.append(f"{path}: missing")
            continue
        if size != info["size"]:
            problems.append(f"{path}: {size} bytes, {info['size']} expected")
        elif full and file_digest(path) != info["digest"]:
            problems.append(f"{path}: content differs from its digest")
    return problems


class RunStore:
    """Under a multi-process launch every rank runs the stages (so a training
    stage trains data-parallel), but only rank 0 holds the lock, writes the
    manifest and commits outputs; the other ranks write to their own
    temporary directory, discard it, and wait for rank 0's commit."""

    def __init__(self, workdir: str | Path, recipe_name: str, rank: int | None = None):
        self.rank = process_rank() if rank is None else rank
        self.root = Path(workdir).resolve() / recipe_name
        self.stages_dir = self.root / "stages"
        self.tmp_dir = self.root / "tmp"
        self.ckpt_dir = self.root / "checkpoints"
        self.logs_dir = self.root / "logs"
        self.manifest_path = self.root / "manifest.json"
        self.corrupt: dict[str, str] = {}  # stage -> why its committed output was not reused

    def digest_cache(self, writable: bool = True) -> DigestCache:
        """Content digests of local inputs, cached by stat signature for this run directory."""
        return DigestCache(self.root / ".digests.json", writable=writable and not self.rank)

    # ---- committed outputs
    def committed_dir(self, stage: str, fingerprint: str) -> Path:
        return self.stages_dir / _key(stage, fingerprint)

    def committed(self, stage: str, fingerprint: str) -> dict[str, Any] | None:
        """The stage record if this key's output is committed and every file
        has its recorded size (a truncated or missing file: None, and the
        reason in ``self.corrupt``)."""
        rec = self.committed_dir(stage, fingerprint) / STAGE_RECORD
        try:
            data: dict[str, Any] = json.loads(rec.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if data.get("fingerprint") != fingerprint or "files" not in data:
            return None
        problems = self.verify(stage, fingerprint, data, full=False)
        if problems:
            self.corrupt[stage] = problems[0]
            return None
        return data

    def verify(self, stage: str, fingerprint: str, record: dict[str, Any], full: bool = True) -> list[str]:
        """Each committed file against the record: sizes always, content digests with ``full``."""
        return check_files(self.committed_dir(stage, fingerprint), record, full)

    def adopt(self, stage: str, fingerprint: str, stage_dir: Path) -> Path:
        """Publish a complete, verified stage directory (from the shared cache) as committed."""
        final = self.committed_dir(stage, fingerprint)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            trash = self.tmp_dir / (final.name + f".old-{os.getpid()}")
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(stage_dir, final)
        self.corrupt.pop(stage, None)
        return final

    @staticmethod
    def output_digests(record: dict[str, Any]) -> dict[str, str]:
        return {name: o["digest"] for name, o in record.get("outputs", {}).items() if "digest" in o}

    def artifact_paths(self, stage: str, fingerprint: str, record: dict[str, Any]) -> str | dict[str, str]:
        base = self.committed_dir(stage, fingerprint)
        arts = {k: str(base / v["path"]) for k, v in record.get("outputs", {}).items()}
        return next(iter(arts.values())) if len(arts) == 1 else arts

    def outputs(self, stage: str, fingerprint: str) -> dict[str, Artifact]:
        rec = self.committed(stage, fingerprint)
        if rec is None:
            raise RunError(f"stage '{stage}' has no committed output for fingerprint {fingerprint[:12]}")
        base = self.committed_dir(stage, fingerprint)
        return {
            name: Artifact.from_json(a, base, producer=stage, fingerprint=fingerprint)
            for name, a in rec["outputs"].items()
        }

    def prepare(self, stage: str, fingerprint: str) -> tuple[Path, Path]:
        """A fresh temporary output dir and the (kept) checkpoint dir."""
        tmp = self.tmp_dir / (_key(stage, fingerprint) + (f".rank{self.rank}" if self.rank else ""))
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "outputs").mkdir(parents=True)
        ckpt = self.ckpt_dir / _key(stage, fingerprint)
        ckpt.mkdir(parents=True, exist_ok=True)
        return tmp, ckpt

    def commit(self, stage: str, fingerprint: str, tmp: Path, record: dict[str, Any]) -> Path:
        """Atomically publish ``tmp`` as the committed output: the record is
        written inside it, then the directory is renamed into place."""
        if self.rank:
            shutil.rmtree(tmp, ignore_errors=True)
            return self._wait_for_commit(stage, fingerprint)
        record = dict(record, fingerprint=fingerprint, **describe_outputs(tmp, record["outputs"]))
        rec_path = tmp / STAGE_RECORD
        rec_path.write_text(json.dumps(record, indent=2, default=str))
        with open(rec_path, "rb") as fh:
            os.fsync(fh.fileno())
        final = self.committed_dir(stage, fingerprint)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # --force: replace the previous output
            trash = self.tmp_dir / (final.name + f".old-{os.getpid()}")
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
        if world_size() == 1:
            # other ranks may still be reading the shared checkpoints; under a
            # multi-process launch they are left for the next run to reuse or replace
            self.clear_checkpoints(stage, fingerprint)
        return final

    def _wait_for_commit(self, stage: str, fingerprint: str, timeout: float = 3600) -> Path:
        deadline = time.time() + timeout
        while self.committed(stage, fingerprint) is None:
            entry = next(
                (
                    e
                    for e in (self.read_manifest() or {}).get("stages", [])
                    if e.get("name") == stage and e.get("fingerprint") == fingerprint
                ),
                None,
            )
            if entry is not None and entry.get("status") == "failed":
                raise RunError(f"rank {self.rank}: rank 0 failed stage '{stage}': {entry.get('error')}")
            if time.time() > deadline:
                raise RunError(f"rank {self.rank}: rank 0 did not commit stage '{stage}' within {timeout:.0f}s")
            time.sleep(0.5)
        return self.committed_dir(stage, fingerprint)

    def checkpoint_dir(self, stage: str, fingerprint: str) -> Path:
        return self.ckpt_dir / _key(stage, fingerprint)

    def clear_checkpoints(self, stage: str, fingerprint: str) -> bool:
        """Drop a stage's in-stage checkpoints (``--force`` starts it from scratch)."""
        d = self.ckpt_dir / _key(stage, fingerprint)
        existed = d.is_dir() and any(d.iterdir())
        shutil.rmtree(d, ignore_errors=True)
        d.with_name(d.name + CHECKPOINT_KEY_SUFFIX).unlink(missing_ok=True)
        return existed

    def checkpoint_has_state(self, stage: str, fingerprint: str) -> bool:
        d = self.ckpt_dir / _key(stage, fingerprint)
        return d.is_dir() and any(d.iterdir())

    # ---- manifest
    def read_manifest(self) -> dict[str, Any] | None:
        try:
            manifest: dict[str, Any] = json.loads(self.manifest_path.read_text())
            return manifest
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        if self.rank:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str))
        os.replace(tmp, self.manifest_path)

    # ---- lock
    def lock(self) -> RunLock:
        return RunLock(self.root / ".lock", enabled=not self.rank)

    def lock_holder(self) -> dict[str, Any] | None:
        """Who holds the run lock now (None when nobody does), read without
        taking the lock, so `recipe status` never blocks a `recipe run`: a live
        holder keeps its pid and host in the lock file and clears them on exit;
        a killed one leaves them, so on this host the pid must still be alive."""
        try:
            text = (self.root / ".lock").read_text()
        except OSError:
            return None
        try:
            holder: dict[str, Any] = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError:
            return None
        if not holder:
            return None
        if holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid")):
            return None
        return holder


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive flock on the run directory.  The kernel releases it when the
    holder dies, so a lock left by a killed run is taken over by the next one
    (which says so); a live holder makes the next run fail with its pid."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self.fh: IO[str] | None = None
        self.took_over: dict[str, Any] | None = None

    def acquire(self) -> RunLock:
        if not self.enabled:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK):
                fh.close()
                raise RunError(
                    f"the filesystem of {self.path.parent} does not support file locks ({e.strerror}), which keep "
                    "two runs out of one run directory: on Lustre mount it with -o flock (not localflock), on NFS "
                    "run the lock service (NFSv3: rpc.statd/lockd; NFSv4 has it built in)"
                ) from None
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            fh.seek(0)
            try:
                holder = json.loads(fh.read() or "{}")
            except json.JSONDecodeError:
                holder = {}
            fh.close()
            raise RunError(
                f"run directory {self.path.parent} is in use by another `recipe run` "
                f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('started', '?')}); "
                "wait for it to finish or stop it"
            ) from None
        fh.seek(0)
        previous = fh.read()
        if previous.strip():
            try:
                self.took_over = json.loads(previous)
            except json.JSONDecodeError:
                self.took_over = {}
        fh.seek(0)
        fh.truncate()
        fh.write(
            json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
            )
        )
        fh.flush()
        self.fh = fh
        return self

    def release(self) -> None:
        if self.fh is not None:
            self.fh.seek(0)
            self.fh.truncate()
            self.fh.flush()
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
