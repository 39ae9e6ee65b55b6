"""Machinery shared by the data stages.

- loading an input DatasetDict with clear errors, saving one,
- the ``num_proc`` / batch-size defaults,
- :class:`ShardStore`: finished shards of a stage kept under
  ``ctx.checkpoint_dir`` so that a stage killed midway redoes only the
  unfinished shards when it is run again,
- :func:`save_streamed`: a DatasetDict written in one sequential pass from
  streams of Arrow tables (e.g. :func:`kept_rows` of a filtered input),
- a quick, never-hanging check that the Hugging Face hub can be reached.

Nothing heavy is imported at module level: stage modules import this one and
must stay cheap to import.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Union
from urllib.parse import urlparse

from pydantic import Field

from recipe_runner.stage import StageError

NumProc = Union[Literal["auto"], int]

#: Below this much input text per shard, a worker process costs more than it
#: saves (for cheap, vectorised passes; costly per-document passes such as
#: language ID or the datatrove rules pass a lower ``min_bytes``).
AUTO_PARALLEL_MIN_BYTES = 8 * 2**20
AUTO_PARALLEL_MIN_BYTES_COSTLY = 1 * 2**20
MAX_AUTO_PROCS = 8

SPLIT_ORDER = ("train", "validation", "test")


def num_proc_field(default: NumProc = "auto") -> Any:
    return Field(
        default,
        description=(
            "Worker processes for the per-document work: an integer, or 'auto' (all usable cores, "
            f"at most {MAX_AUTO_PROCS}, once the input holds {AUTO_PARALLEL_MIN_BYTES // 2**20} MiB of text, "
            f"or {AUTO_PARALLEL_MIN_BYTES_COSTLY // 2**20} MiB for costly per-document work such as language "
            "ID; one process below that, where starting workers costs more than it saves)."
        ),
    )


def batch_size_field(default: int = 1000) -> Any:
    return Field(default, ge=1, description="Documents per batch handed to the batched (Arrow) passes.")


def shard_size_field(default: int = 50_000) -> Any:
    return Field(
        default, ge=1,
        description=(
            "At most this many documents per checkpoint shard (filter, dedup and tokenize also cut shards "
            "by bytes of text, so workers stay balanced). Each finished shard is kept in the stage's "
            "checkpoint directory, so a run that is killed midway redoes only the unfinished shards."
        ),
    )


def usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def resolve_num_proc(num_proc: NumProc, nbytes: int, rows: int | None = None,
                     min_bytes: int = AUTO_PARALLEL_MIN_BYTES) -> int:
    """The number of processes for one pass over ``nbytes`` of input."""
    if num_proc == "auto":
        if nbytes < min_bytes:
            return 1
        n = min(usable_cpus(), MAX_AUTO_PROCS)
    else:
        n = max(1, int(num_proc))
    if rows is not None:
        n = max(1, min(n, rows))
    return n


def table_nbytes(ds: Any) -> int:
    """Bytes of the Arrow data behind a Dataset (a slice counts only its rows)."""
    try:
        return int(ds.data.nbytes)
    except Exception:  # pragma: no cover - defensive
        return 0


def ordered_splits(names: Any) -> list[str]:
    names = list(names)
    return [s for s in SPLIT_ORDER if s in names] + sorted(s for s in names if s not in SPLIT_ORDER)


# --------------------------------------------------------------------- I/O


def load_dataset_dict(art: Any, what: str = "dataset") -> Any:
    """Load an upstream artifact saved with ``save_to_disk`` as a DatasetDict
    (a bare Dataset becomes ``{"train": ds}``)."""
    from datasets import Dataset, DatasetDict, load_from_disk

    path = Path(art.path)
    if not path.exists():
        raise StageError(f"the input {what} {path} does not exist")
    try:
        data = load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - turned into a user-facing message
        raise StageError(f"cannot read the input {what} at {path}: {e}") from e
    if isinstance(data, Dataset):
        data = DatasetDict({"train": data})
    return DatasetDict({s: data[s] for s in ordered_splits(data.keys())})


def require_column(dd: Any, column: str, what: str, param: str = "text_column", text: bool = False) -> None:
    """Every split has ``column`` (holding strings, with ``text``)."""
    for split, ds in dd.items():
        if column not in ds.column_names:
            raise StageError(
                f"the input {what}'s split {split!r} has no column {column!r} "
                f"(its columns: {ds.column_names}); set the parameter {param!r} to the column to use"
            )
        if text:
            import pyarrow as pa

            t = ds.data.schema.field(column).type
            if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
                raise StageError(f"the input {what}'s column {column!r} (split {split!r}) holds {t}, not text; "
                                 f"set the parameter {param!r} to the column holding the text")


def save_dataset_dict(splits: dict[str, Any], path: Path, num_proc: int | None = None) -> None:
    from datasets import DatasetDict

    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    kwargs: dict[str, Any] = {}
    if any(len(d) == 0 for d in splits.values()):
        # datasets writes no shard for an empty split, and then cannot load it back
        kwargs["num_shards"] = {s: 1 for s, d in splits.items() if len(d) == 0}
        kwargs["num_shards"].update({s: max(1, -(-int(d.data.nbytes) // (500 * 2**20)))
                                     for s, d in splits.items() if len(d)})
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
        k = keep[a: a + part.num_rows]
        a += part.num_rows
        yield part if k.all() else part.filter(pa.array(k))


#: rows per file of a saved split, as ``save_to_disk`` shards (its default max_shard_size)
SAVED_FILE_BYTES = 500 * 2**20


def save_streamed(splits: dict[str, tuple[Any, Iterable[Any]]], path: Path) -> dict[str, Any]:
    """Save ``{split: (template Dataset, stream of pyarrow tables)}`` as a
    DatasetDict at ``path`` (``save_to_disk``'s layout, so ``load_from_disk``
    reads it) and return the saved splits, memory-mapped.

    The tables are written once, sequentially, with the template's features
    and info: no per-row gather (``Dataset.select(...).save_to_disk``) and no
    second copy."""
    from datasets import load_from_disk
    from datasets.arrow_writer import ArrowWriter
    from datasets.utils.py_utils import asdict  # save_to_disk's (dataclasses.asdict breaks ClassLabel)

    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    for split, (template, tables) in splits.items():
        d = path / split
        d.mkdir()
        files: list[Path] = []
        writer, size = None, 0
        for t in tables:
            if writer is None or (size >= SAVED_FILE_BYTES and t.num_rows):
                if writer is not None:
                    writer.finalize()
                    writer.close()
                files.append(d / f"data-{len(files):05d}.arrow")
                writer, size = ArrowWriter(features=template.features, path=str(files[-1]),
                                           embed_local_files=True), 0
            if t.num_rows:
                writer.write_table(t)
                size += t.nbytes
        if writer is None:  # no table at all: an empty split still gets a file with the schema
            files.append(d / "data-00000.arrow")
            writer = ArrowWriter(features=template.features, path=str(files[-1]))
        writer.finalize()
        writer.close()
        names = []
        for i, f in enumerate(files):  # save_to_disk's names
            name = f"data-{i:05d}-of-{len(files):05d}.arrow"
            f.rename(d / name)
            names.append(name)
        state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": uuid.uuid4().hex,
                 "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
                 "_output_all_columns": False,
                 "_split": str(template.split) if template.split is not None else None}
        (d / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
        info = asdict(template.info)
        (d / "dataset_info.json").write_text(json.dumps({k: info[k] for k in sorted(info)}, indent=2))
    (path / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    saved = load_from_disk(str(path))
    return {s: saved[s] for s in splits}


def artifact_identity(art: Any) -> dict[str, Any]:
    """What identifies an upstream artifact's content for a shard key: its
    fingerprint when the runner knows it, else its path and the mtimes of the
    files ``save_to_disk`` writes."""
    if art is None:
        return {}
    ident: dict[str, Any] = {"path": str(art.path), "fingerprint": getattr(art, "fingerprint", None)}
    p = Path(art.path)
    stamps = []
    if p.is_dir():
        for f in sorted(p.rglob("*.json")):
            with contextlib.suppress(OSError):
                st = f.stat()
                stamps.append((str(f.relative_to(p)), st.st_size, st.st_mtime_ns))
    ident["files"] = stamps
    return ident


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """Turn off datasets' own tqdm bars while a stage runs (the runner shows
    progress through ``ctx.progress``) and restore the setting afterwards."""
    import datasets.utils.logging as dlog

    was = dlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            dlog.enable_progress_bar()


def with_quiet_datasets(run: Callable) -> Callable:
    """Decorate a data stage's ``run`` so datasets' own bars stay off while it runs."""
    import functools

    @functools.wraps(run)
    def wrapper(self: Any, ctx: Any) -> Any:
        with quiet_datasets():
            return run(self, ctx)

    return wrapper


def order_metrics(m: dict[str, Any], first: list[str]) -> None:
    """Reorder ``m`` in place: keys (or ``prefix.`` groups) in ``first`` lead,
    so summaries show the informative numbers."""
    ordered: dict[str, Any] = {}
    for f in first:
        if f.endswith("."):
            ordered.update({k: v for k, v in m.items() if k.startswith(f)})
        elif f in m:
            ordered[f] = m[f]
    ordered.update(m)
    m.clear()
    m.update(ordered)


# ------------------------------------------------------------- shard store


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class ShardStore:
    """Finished shards of one stage run, kept under the checkpoint directory.

    ``key`` is everything the shards' content depends on (params, inputs);
    a store opened with a different key starts empty.  A shard is written
    into a temporary directory and renamed into place when complete, so a
    kill never leaves a half-written shard that looks finished.
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
        return json.loads((self.root / name / "meta.json").read_text())

    def commit(self, name: str, write: Callable[[Path], dict[str, Any] | None]) -> dict[str, Any]:
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

    def get_or_make(self, name: str, write: Callable[[Path], dict[str, Any] | None]) -> tuple[Path, dict[str, Any]]:
        if self.done(name):
            self.reused += 1
            return self.path(name), self.meta(name)
        meta = self.commit(name, write)
        return self.path(name), meta


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    if n == 0:
        return [(0, 0)]
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def load_arrow(path: Path) -> Any:
    from datasets import Dataset

    return Dataset.from_file(str(path))


# --------------------------------------------------------------- the hub


def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("HF_DATASETS_OFFLINE")) \
        or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except Exception:  # pragma: no cover
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """None when a TCP connection to the hub (or the HTTPS proxy) opens
    within ``timeout`` seconds, else why not.  Never hangs."""
    endpoint = hub_endpoint()
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlparse(proxy if proxy else endpoint)
    host = target.hostname or ""
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        via = f" (via the proxy {proxy})" if proxy else ""
        return f"cannot reach {endpoint}{via}: {e}"
