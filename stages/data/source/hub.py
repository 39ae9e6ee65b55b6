"""Reading a dataset from the Hugging Face hub (or its local cache), whole
or streamed."""

from __future__ import annotations

from typing import Any

from recipe_runner import StageError

from ...common.hub import offline_reason, unreachable_reason
from .specs import HubSource
from .writer import WRITE_BATCH_DOCS, DocumentWriter, write_columnar


def read_hub(spec: HubSource, writer: DocumentWriter, stats: dict[str, Any]) -> None:
    """Write the documents of the hub dataset.  With the hub offline only the
    local cache is tried; otherwise a quick probe first, so that a machine
    without network fails at once."""
    ds = _load(spec, writer.source)
    if not spec.streaming:
        if spec.take:
            ds = ds.select(range(min(spec.take, len(ds))))
        write_columnar(ds, spec, writer, stats, what=f"the hub dataset {spec.dataset!r}")
        return
    if spec.take:
        ds = ds.take(spec.take)
    if spec.keep_columns:
        if ds.features is None:
            raise StageError(
                f"source {writer.source!r}: the streamed hub dataset {spec.dataset!r} does not "
                "declare its features, so keep_columns cannot type them; set streaming: false"
            )
        writer.keep(ds.features, f"the hub dataset {spec.dataset!r}")
    _write_streamed(ds, spec, writer, stats)


def _load(spec: HubSource, source: str) -> Any:
    offline = offline_reason()
    if offline is None:
        unreachable = unreachable_reason()
        if unreachable:
            raise StageError(
                f"source {source!r}: the hub dataset {spec.dataset!r} needs the Hugging Face hub, and {unreachable}. "
                "Use a local copy (type 'files'), or set HF_HUB_OFFLINE=1 to use a copy in the local Hugging Face "
                "cache."
            )
    import datasets

    try:
        return datasets.load_dataset(
            spec.dataset, spec.subset, split=spec.split, revision=spec.revision, streaming=spec.streaming
        )
    except Exception as e:  # datasets raises many types; the message names the dataset
        hint = f" {offline[0].upper()}{offline[1:]}, and the dataset is not in the local cache." if offline else ""
        raise StageError(
            f"source {source!r}: cannot load the hub dataset {spec.dataset!r} "
            f"(subset {spec.subset!r}, split {spec.split!r}): {type(e).__name__}: {e}.{hint}"
        ) from e


def _write_streamed(ds: Any, spec: HubSource, writer: DocumentWriter, stats: dict[str, Any]) -> None:
    """Write a streamed dataset row by row, flushed every WRITE_BATCH_DOCS
    documents (memory stays bounded)."""
    col = spec.text_column
    buf: list[str] = []
    extras: dict[str, list[Any]] = {c: [] for c in spec.keep_columns}
    for row in ds:
        if col not in row:
            raise StageError(
                f"source {writer.source!r}: the hub dataset has no column {col!r} "
                f"(columns: {sorted(row)}); set 'text_column'"
            )
        t = row[col]
        if not isinstance(t, str) or not t.strip():
            stats["skipped_empty_documents"] += 1
            continue
        if spec.max_chars is not None and len(t) > spec.max_chars:
            stats["skipped_long_documents"] += 1
            continue
        buf.append(t)
        for c in spec.keep_columns:
            extras[c].append(row.get(c))
        if len(buf) >= WRITE_BATCH_DOCS:
            writer.add(buf, extras)
            buf, extras = [], {c: [] for c in spec.keep_columns}
    writer.add(buf, extras)
