"""``source``: read documents from local files, fsspec URLs or the Hugging Face hub, mix
several sources by counts or weights, and split off a seeded validation set.

Output: a ``dataset`` artifact (DatasetDict with "train" and, when asked,
"validation"; columns "text", "source" and any ``keep_columns``).  Each
source (for files: each 500 files) is a checkpoint shard.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from recipe_runner import DATASET, Artifact, Params, PlanView, Stage, StageContext, StageError

from ..arrow_io import kept_rows, load_arrow, save_dataset_dict, save_streamed
from ..metrics import order_metrics
from ..params import Executor, executor_field
from ..progress_bars import with_quiet_datasets
from ..shard_store import ShardStore, result_params
from ..workers import make_shards
from .files import InputFile, SourceFiles, default_name, describe_skipped, file_format, files_in_key, match_files
from .hub import read_hub
from .mixing import align_columns, plan_counts, sample_indices, split_indices
from .remote import RemoteFile, check_keyed, check_unchanged, remote_listings
from .specs import MAX_DOCUMENTS, FilesSource, HubSource, SourceSpec, credential_problems
from .structured import read_structured
from .text_files import read_text_files
from .writer import COUNTERS, DocumentWriter, new_counts

FILES_PER_SHARD = 500


class SourceParams(Params):
    sources: list[SourceSpec] = Field(
        ...,
        min_length=1,
        description=(
            "The sources to read, each a mapping with 'type' 'files' (key 'path') or 'hub' (key 'dataset') "
            "and the options listed under FilesSource / HubSource."
        ),
    )
    total: int | None = Field(
        None,
        ge=1,
        le=MAX_DOCUMENTS,
        description=(
            "Documents in the mix when the sources have weights (default: as many as the data allows "
            "without repeating any source). At most 10**10."
        ),
    )
    shuffle: bool = Field(
        False, description="Shuffle the mixed documents (seeded); otherwise they keep the sources' order."
    )
    validation: float | int | None = Field(
        None,
        description=(
            "Size of a validation split drawn at random (seeded) from the mix: a fraction in (0, 1) or a "
            "number of documents. None: train only."
        ),
    )
    seed: int | None = Field(
        None, ge=0, description="Seed for sampling, shuffling and the split, from 0 (default: the recipe's seed)."
    )
    executor: Executor = executor_field()

    @field_validator("validation")
    @classmethod
    def _check_validation(cls, v: Any) -> Any:
        if v is None:
            return v
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("validation must be a fraction in (0, 1) or a count >= 1, not infinite or NaN")
        if isinstance(v, float) and not v.is_integer():
            if not 0 < v < 1:
                raise ValueError("a validation fraction must be between 0 and 1; a count must be a whole number")
            return v
        if not 1 <= int(v) <= MAX_DOCUMENTS:
            raise ValueError("validation must be a fraction in (0, 1) or a count from 1 to 10**10")
        return int(v)

    @model_validator(mode="after")
    def _check_mix(self) -> SourceParams:
        weights = [s.weight is not None for s in self.sources]
        if any(weights):
            if not all(weights):
                raise ValueError("either every source has a 'weight' or none has")
            if any(s.count is not None for s in self.sources):
                raise ValueError("sources with weights cannot also have a 'count'")
        elif self.total is not None:
            raise ValueError("'total' applies to weighted sources; give each source a 'weight' (or use 'count')")
        return self


@dataclass
class _Read:
    """What reading the sources gave: a Dataset per source, the summed
    counters, the files skipped as undecodable."""

    datasets: list[Any]
    counts: dict[str, int] = field(default_factory=new_counts)
    undecodable: list[str] = field(default_factory=list)


class SourceStage(Stage[SourceParams]):
    name = "source"
    version = "1"
    description = (
        "Read documents from local files or fsspec URLs, streamed (s3://, gs://, hf://, https://): text, source "
        "code, JSON Lines, JSON, Parquet, CSV, each optionally gzipped; or from the Hugging Face hub. Mix sources "
        "by counts or weights; split off a seeded validation set."
    )
    Params = SourceParams
    outputs = {"dataset": DATASET}

    @classmethod
    def local_inputs(cls, params: SourceParams) -> Mapping[str, Path]:
        """Every local file the sources read, and a hub source's dataset where it
        names a local directory (their content is the key, not their paths)."""
        out: dict[str, Path] = {}
        for i, spec in enumerate(params.sources):
            if isinstance(spec, FilesSource):
                out.update(files_in_key(spec, f"sources.{i}.path"))
            elif Path(spec.dataset).expanduser().exists():  # a dataset directory 'datasets' loads locally
                out[f"sources.{i}.dataset"] = Path(spec.dataset).expanduser()
        return out

    @classmethod
    def cross_check(cls, view: PlanView[SourceParams]) -> list[str]:
        return credential_problems(view.params.sources)

    @classmethod
    def fingerprint_extra(cls, params: SourceParams) -> Any:
        """The listing of every URL entry (each object's URL, size and ETag or
        mtime: one listing per entry), so an edited object re-keys the stage;
        None without URLs."""
        return remote_listings(params.sources)

    @with_quiet_datasets
    def run(self, ctx: StageContext[SourceParams]) -> dict[str, Artifact]:
        import numpy as np

        p = ctx.params
        seed = ctx.seed if p.seed is None else p.seed
        names = _source_names(p.sources)
        check_keyed(p.sources)
        matched = [match_files(spec) if isinstance(spec, FilesSource) else None for spec in p.sources]
        skipped = _report_skipped(matched, ctx.log)
        store = ShardStore(ctx.checkpoint_dir / "source-shards", _store_key(self.version, p, matched), ctx.log)
        read = _read_sources(ctx, names, matched, store)
        check_unchanged(p.sources, matched)
        per_source = align_columns(read.datasets, names)
        avail = [len(d) for d in per_source]
        for name, n in zip(names, avail, strict=True):
            if n == 0:
                raise StageError(f"source {name!r} yielded no documents (see the skipped-file counts in the log)")
        counts = plan_counts(avail, p.sources, p.total)
        rng = np.random.default_rng(seed)
        mixed = _mix(per_source, names, counts, rng, ctx.log)
        if p.shuffle:
            mixed = mixed.shuffle(seed=seed)
        out = ctx.output_path("dataset")
        splits = _save_splits(mixed, p.validation, rng, out)
        m = ctx.metrics
        m.update(read.counts)
        m["skipped_files"] = skipped
        for name, n, k in zip(names, avail, counts, strict=True):
            m[f"documents.{name}"] = int(k)
            m[f"available.{name}"] = int(n)
        for s, d in splits.items():
            m[f"{s}_documents"] = len(d)
        m["shards_reused"] = store.reused
        m["shards_computed"] = store.computed
        order_metrics(m, ["train_documents", "validation_documents", "documents."])
        meta = {"splits": {s: len(d) for s, d in splits.items()}, "sources": names, "text_column": "text"}
        return {"dataset": Artifact(DATASET, out, meta=meta)}


def _store_key(version: str, p: SourceParams, matched: list[SourceFiles | None]) -> dict[str, Any]:
    """What the source shards hold: the parameters and the size and mtime of every file read."""
    files = [[(str(f), *_size_and_mtime(f)) for f in m.files] if m else None for m in matched]
    return {"stage": "source", "v": version, "params": result_params(p), "files": files}


def _size_and_mtime(path: InputFile) -> tuple[Any, Any]:
    if isinstance(path, RemoteFile):  # as listed: its size and ETag (or mtime)
        return path.size, path.version
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _report_skipped(matched: list[SourceFiles | None], log: Any) -> dict[str, int]:
    """The paths under the sources' roots passed over, by reason (logged)."""
    skipped: Counter[str] = Counter()
    for m in matched:
        if m is not None:
            skipped.update(m.skipped)
    if skipped:
        log.warning("passed over %d path(s) under the sources' roots: %s", skipped.total(), describe_skipped(skipped))
    return dict(sorted(skipped.items()))


def _source_names(sources: list[FilesSource | HubSource]) -> list[str]:
    """Each source's label, made unique."""
    names: list[str] = []
    for i, spec in enumerate(sources):
        n = default_name(spec, i)
        while n in names:
            n = f"{n}-{i}"
        names.append(n)
    return names


def _read_sources(
    ctx: StageContext[SourceParams], names: list[str], matched: list[SourceFiles | None], store: ShardStore
) -> _Read:
    """Read every source shard (reusing finished ones) into a Dataset per source."""
    from datasets import concatenate_datasets

    sources = ctx.params.sources
    jobs: list[tuple[int, str, list[InputFile] | None]] = []  # (source index, shard name, files)
    for i, m in enumerate(matched):
        if m is None:  # a hub dataset: one shard
            jobs.append((i, f"src{i:03d}-00000", None))
            continue
        for j in range(0, len(m.files), FILES_PER_SHARD):
            jobs.append((i, f"src{i:03d}-{j // FILES_PER_SHARD:05d}", m.files[j : j + FILES_PER_SHARD]))
    writers = {
        shard: functools.partial(_read_shard, spec=sources[i], files=files, name=names[i]) for i, shard, files in jobs
    }
    metas: dict[str, dict[str, Any]] = {}
    with ctx.progress("source: reading", total=len(jobs)) as prog:

        def done(shard: str, meta: dict[str, Any]) -> None:
            metas[shard] = meta
            prog.advance(1)

        make_shards(store, writers, ctx.params.executor, done, what="reading the sources")
    parts: dict[int, list[Any]] = {i: [] for i in range(len(sources))}
    read = _Read(datasets=[])
    for i, shard, _ in jobs:
        for c in COUNTERS:
            read.counts[c] += metas[shard].get(c, 0)
        read.undecodable += metas[shard].get("_skipped", [])
        parts[i].append(load_arrow(store.path(shard) / "data.arrow"))
    if read.undecodable:
        shown = ", ".join(read.undecodable[:5])
        if len(read.undecodable) > 5:
            shown += f" and {len(read.undecodable) - 5} more"
        n_skipped = len(read.undecodable)
        ctx.log.warning("skipped %d file(s) that are not valid text in their encoding: %s", n_skipped, shown)
    read.datasets = [concatenate_datasets(ds) if len(ds) > 1 else ds[0] for ds in parts.values()]
    return read


def _read_shard(
    tmp: Path, *, spec: FilesSource | HubSource, files: list[InputFile] | None, name: str
) -> dict[str, Any]:
    """One source shard: ``data.arrow`` and its counts (in this process or a
    Ray task; gzipped structured files are unpacked into a scratch directory
    of its own beside ``tmp``, which the store clears with its temporary ones)."""
    stats = new_counts()
    scratch = tmp.parent / f".tmp-scratch-{tmp.name}"
    writer = DocumentWriter(tmp / "data.arrow", name, spec.keep_columns)
    try:
        if isinstance(spec, HubSource):
            read_hub(spec, writer, stats)
        else:
            by_format: dict[str, list[InputFile]] = {}
            for f in files or []:
                by_format.setdefault(file_format(spec, f), []).append(f)
            for fmt, group in by_format.items():
                if fmt == "text":
                    read_text_files(group, spec, writer, stats)
                else:
                    scratch.mkdir(exist_ok=True)
                    read_structured(group, fmt, spec, writer, stats, scratch)
    finally:
        writer.close()
        shutil.rmtree(scratch, ignore_errors=True)
    stats["rows"] = writer.rows
    stats["chars"] = writer.total_chars
    return stats


def _mix(per_source: list[Any], names: list[str], counts: list[int], rng: Any, log: Any) -> Any:
    """The sources' seeded samples of ``counts`` documents, concatenated in source order."""
    from datasets import concatenate_datasets

    chosen = []
    for name, d, k in zip(names, per_source, counts, strict=True):
        n = len(d)
        if k > n:
            log.info("source %r: %d documents requested, %d available: repeating it", name, k, n)
        idx = _sample(name, n, k, rng)
        chosen.append(d if len(idx) == n and k == n else d.select(idx))
    mixed = concatenate_datasets(chosen) if len(chosen) > 1 else chosen[0]
    if len(mixed) == 0:
        raise StageError("the mix is empty")
    return mixed


def _sample(name: str, n: int, k: int, rng: Any) -> Any:
    """:func:`sample_indices`, refused with a StageError (not a bare
    MemoryError) when its 8 bytes per document cannot fit in this machine's memory."""
    too_big = StageError(
        f"source {name!r}: {k} documents asked for (of {n}) need {8 * k / 2**30:.1f} GiB of sample indices, "
        "more than this machine's memory; lower its count or the total"
    )
    if 8 * k > physical_memory():
        raise too_big
    try:
        return sample_indices(n, k, rng)
    except MemoryError:
        raise too_big from None


def physical_memory() -> int:
    """Bytes of this machine's memory (a very large number where the platform does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 2**62


def _save_splits(mixed: Any, validation: float | int | None, rng: Any, out: Path) -> dict[str, Any]:
    """Save the mix at ``out``, with a seeded validation split when asked; return the saved splits."""
    import numpy as np

    train_idx, val_idx = split_indices(len(mixed), validation, rng)
    if val_idx is None:
        splits = {"train": mixed}
        save_dataset_dict(splits, out)
        return splits
    if getattr(mixed, "_indices", None) is None:  # rows in place: split by masks in one sequential pass
        is_val = np.zeros(len(mixed), dtype=bool)
        is_val[val_idx] = True
        table = mixed.data.table
        return save_streamed(
            {"train": (mixed, kept_rows(table, ~is_val)), "validation": (mixed, kept_rows(table, is_val))}, out
        )
    splits = {"train": mixed.select(train_idx), "validation": mixed.select(val_idx)}  # sampled or shuffled: gather
    save_dataset_dict(splits, out)
    return splits
