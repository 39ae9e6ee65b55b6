"""``filter``: an ordered list of document filters; metrics count the
documents each one removed.  The filters are registered in the entry-point
group ``recipe_runner.filters`` (:mod:`.registry`), the built-in ones in
their own modules beside this one."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from recipe_runner import DATASET, Artifact, Input, Params, Stage, StageContext, StageError

from ..arrow_io import kept_rows, save_streamed
from ..inputs import load_documents
from ..metrics import order_metrics
from ..params import Executor, NumProc, batch_size_field, executor_field, num_proc_field, shard_size_field
from ..progress_bars import with_quiet_datasets
from ..shard_store import ShardStore
from ..shards import ShardPlan, open_shard_store, plan_dataset
from ..workers import AUTO_PARALLEL_MIN_BYTES, AUTO_PARALLEL_MIN_BYTES_COSTLY, map_shards
from .base import DocumentFilter
from .chain import filter_batch, filter_chain
from .specs import FilterSpec

#: most text in one batch of the filters (bytes): the batch-wise rules hold a few times that in memory
MAX_BATCH_BYTES = 4 * 2**20


def _course_defaults() -> list[dict[str, Any]]:
    return [{"type": "paragraph_length"}, {"type": "paragraph_repetition"}]


class FilterParams(Params):
    filters: list[FilterSpec] = Field(
        default_factory=_course_defaults,
        validate_default=True,
        description=(
            "Filters applied in order, each a mapping with a 'type': paragraph_length, paragraph_repetition "
            "(the course's two, the default), length, gopher_quality, gopher_repetition, c4, fineweb, "
            "language, or a filter a plugin registers in the entry-point group 'recipe_runner.filters'; the "
            "other keys are the filter's options. A document removed by one filter is not seen by the next."
        ),
    )
    text_column: str = Field("text", description="Column holding the text.")
    num_proc: NumProc = num_proc_field()
    batch_size: int = batch_size_field()
    shard_size: int = shard_size_field()
    executor: Executor = executor_field()

    def filter_names(self) -> list[str]:
        """Each filter's label in the metrics: its ``name`` or type, made unique (``-2``, ``-3``)."""
        names: list[str] = []
        for f in self.filters:
            base = f.name or f.type
            name, k = base, 2
            while name in names:
                name, k = f"{base}-{k}", k + 1
            names.append(name)
        return names


@dataclass
class _Removed:
    """Documents removed, per filter (by index) and per ``<filter>.<reason>``."""

    names: list[str]
    per_filter: list[int] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.per_filter = [0] * len(self.names)

    def add(self, shard_counts: dict[str, int]) -> None:
        for key, n in shard_counts.items():
            index, why = key.split(":", 1)
            self.per_filter[int(index)] += n
            label = f"{self.names[int(index)]}.{why or 'removed'}"
            self.reasons[label] = self.reasons.get(label, 0) + n


class FilterStage(Stage[FilterParams]):
    name = "filter"
    version = "1"
    description = (
        "Remove documents by an ordered list of filters: the course's paragraph length and repetition "
        "filters, length bounds, Gopher quality/repetition, C4 and FineWeb rules (datatrove), fastText "
        "language ID, or plugins. Metrics count the documents each filter removed."
    )
    Params = FilterParams
    inputs = {"dataset": Input(DATASET, description="Documents to filter.")}
    outputs = {"dataset": DATASET}

    @classmethod
    def local_inputs(cls, params: FilterParams) -> Mapping[str, Path]:
        """The local files the filters' options name (a language model file...)."""
        return {
            f"filters.{i}.{option}": path
            for i, f in enumerate(params.filters)
            for option, path in f.local_inputs().items()
        }

    @with_quiet_datasets
    def run(self, ctx: StageContext[FilterParams]) -> dict[str, Artifact]:
        p = ctx.params
        art, dd = load_documents(ctx, p.text_column)
        specs_json = json.dumps([f.model_dump(mode="json") for f in p.filters])
        filters = _build_filters(specs_json)  # here, so a broken option fails before any work
        edits = any(f.edits_text for f in filters)
        store = open_shard_store(ctx, "filter", self.version, p, art)
        costly = not all(f.vectorised for f in filters)
        min_bytes = AUTO_PARALLEL_MIN_BYTES_COSTLY if costly else AUTO_PARALLEL_MIN_BYTES
        plan = plan_dataset(dd, p.text_column, p.shard_size, p.num_proc, min_bytes=min_bytes, executor=p.executor)
        removed = _Removed(p.filter_names())
        with ctx.progress("filter", total=plan.rows) as prog:
            shard_kwargs = {
                "specs_json": specs_json,
                "text_column": p.text_column,
                "edits": edits,
                "batch_size": p.batch_size,
            }

            def done(name: str, meta: dict[str, Any], rows: int) -> None:
                removed.add(meta["reasons"])
                prog.advance(rows)

            map_shards(store, plan, _filter_shard, shard_kwargs, what="filtering", on_done=done)
        out = ctx.output_path("dataset")
        out_splits = save_streamed(_kept_streams(dd, plan, store, p.text_column, edits), out)
        _record_metrics(ctx, dd, out_splits, removed, store)
        meta = {**art.meta, "splits": {s: len(d) for s, d in out_splits.items()}}
        return {"dataset": Artifact(DATASET, out, meta=meta)}


def _build_filters(specs_json: str) -> list[DocumentFilter[Any]]:
    """The filters, built in this process (the workers inherit them); a filter
    that cannot be set up is a StageError."""
    try:
        return filter_chain(specs_json)
    except StageError:
        raise
    except Exception as e:  # a filter's own set-up (a plugin's too) may raise anything
        raise StageError(f"cannot set up the filters: {type(e).__name__}: {e}") from e


def _kept_streams(
    dd: Any, plan: ShardPlan, store: ShardStore, text_column: str, edits: bool
) -> dict[str, tuple[Any, Iterator[Any]]]:
    """Per split: (the input split, its kept rows shard by shard)."""
    return {
        split: (ds, _kept(plan.tables[split], [store.path(n) for n in plan.names(split)], text_column, edits))
        for split, ds in dd.items()
    }


def _record_metrics(
    ctx: StageContext[FilterParams], dd: Any, out_splits: dict[str, Any], removed: _Removed, store: ShardStore
) -> None:
    m = ctx.metrics
    for split, ds in dd.items():
        m[f"{split}_documents_in"] = len(ds)
        m[f"{split}_documents_out"] = len(out_splits[split])
    if len(out_splits.get("train", [])) == 0:
        ctx.log.warning("the filters removed every training document")
    m["documents_in"] = sum(len(ds) for ds in dd.values())
    m["documents_out"] = sum(len(d) for d in out_splits.values())
    for name, n in zip(removed.names, removed.per_filter, strict=True):
        m[f"removed.{name}"] = int(n)
    for k in sorted(removed.reasons):
        m[f"reasons.{k}"] = removed.reasons[k]
    m["shards_reused"] = store.reused
    m["shards_computed"] = store.computed
    order_metrics(m, ["documents_in", "documents_out", "removed."])


def _filter_shard(table: Any, tmp: Path, specs_json: str, text_column: str, edits: bool, batch_size: int) -> Any:
    """One shard: ``drop.npy`` (index of the filter that removed each document,
    -1 if kept), the edited texts when a filter edits, and removal counts."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.feather as feather

    table = table.select([text_column])
    results = [
        filter_batch(table.slice(a, b - a), specs_json, text_column, edits)
        for a, b in _batches(table.column(text_column), batch_size, MAX_BATCH_BYTES)
    ]
    res = pa.concat_tables(results) if results else None
    drop = res.column("_drop").to_numpy().astype(np.int16) if res is not None else np.zeros(0, np.int16)
    np.save(tmp / "drop.npy", drop)
    counts: dict[str, int] = {}
    if res is not None:
        dropped = res.filter(pc.greater_equal(res.column("_drop"), 0))
        keys = pc.binary_join_element_wise(pc.cast(dropped.column("_drop"), "string"), dropped.column("_reason"), ":")
        for row in pc.value_counts(keys).to_pylist():
            counts[row["values"]] = row["counts"]
    if edits:
        texts = res.select([text_column]) if res is not None else pa.table({text_column: pa.array([], pa.string())})
        feather.write_feather(texts, str(tmp / "text.arrow"), compression="uncompressed")
    return {"rows": table.num_rows, "reasons": counts}


def _batches(texts: Any, batch_size: int, max_bytes: int) -> list[tuple[int, int]]:
    """Row ranges of at most ``batch_size`` rows and, unless one row is more,
    ``max_bytes`` of text: what a batch of the vectorised rules holds in memory
    grows with its text."""
    import numpy as np
    import pyarrow.compute as pc

    sizes = pc.binary_length(texts).to_numpy(zero_copy_only=False)
    ends = np.cumsum(np.nan_to_num(sizes, nan=0).astype(np.int64))
    bounds, a = [], 0
    while a < len(ends):
        base = ends[a - 1] if a else 0
        b = max(int(np.searchsorted(ends, base + max_bytes, side="right")), a + 1)
        b = min(b, a + batch_size)
        bounds.append((a, b))
        a = b
    return bounds


def _kept(table: Any, shard_paths: list[Path], text_column: str, edits: bool) -> Iterator[Any]:
    """The kept rows, shard by shard (edited texts swapped in where a filter edits)."""
    import numpy as np
    import pyarrow.feather as feather

    a = 0
    for path in shard_paths:
        keep = np.load(path / "drop.npy") < 0
        part = table.slice(a, len(keep))
        a += len(keep)
        if edits:
            text = feather.read_table(str(path / "text.arrow"), memory_map=True).column(text_column)
            part = part.set_column(part.schema.get_field_index(text_column), text_column, text)
        yield from kept_rows(part, keep)
