"""``filter``: an ordered list of document filters; metrics count the
documents each one removed.  The filters themselves are in ``filters.py``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field

from recipe_runner.artifacts import DATASET, Artifact
from recipe_runner.stage import Input, Params, Stage, StageContext, StageError

from ._parallel import SHARD_LAYOUT, map_shards, plan_dataset
from ._util import (
    AUTO_PARALLEL_MIN_BYTES, AUTO_PARALLEL_MIN_BYTES_COSTLY, NumProc, ShardStore, artifact_identity,
    batch_size_field, kept_rows, load_dataset_dict, num_proc_field, order_metrics, require_column,
    save_streamed, shard_size_field, with_quiet_datasets,
)
from .filters import TEXT_MODIFYING, FilterSpec

#: vectorised filters: a worker process only pays off on big shards
CHEAP = {"paragraph_length", "paragraph_repetition", "length"}


def _course_defaults() -> list[Any]:
    return [{"type": "paragraph_length"}, {"type": "paragraph_repetition"}]


class FilterParams(Params):
    filters: list[FilterSpec] = Field(
        default_factory=_course_defaults,  # type: ignore[arg-type]
        validate_default=True,
        description=("Filters applied in order, each a mapping with a 'type': paragraph_length, paragraph_repetition "
                     "(the course's two, the default), length, gopher_quality, gopher_repetition, c4, fineweb, "
                     "language, or plugin (an entry point in the group 'recipe_runner.filters'). A document removed "
                     "by one filter is not seen by the next."))
    text_column: str = Field("text", description="Column holding the text.")
    num_proc: NumProc = num_proc_field()
    batch_size: int = batch_size_field()
    shard_size: int = shard_size_field()

    def filter_names(self) -> list[str]:
        names: list[str] = []
        for f in self.filters:
            base = f.name or f.type
            name, k = base, 2
            while name in names:
                name, k = f"{base}-{k}", k + 1
            names.append(name)
        return names


class FilterStage(Stage):
    name = "filter"
    version = "1"
    description = ("Remove documents by an ordered list of filters: the course's paragraph length and repetition "
                   "filters, length bounds, Gopher quality/repetition, C4 and FineWeb rules (datatrove), fastText "
                   "language ID, or plugins. Metrics count the documents each filter removed.")
    Params = FilterParams
    inputs = {"dataset": Input(DATASET, description="Documents to filter.")}
    outputs = {"dataset": DATASET}

    @with_quiet_datasets
    def run(self, ctx: StageContext) -> dict[str, Artifact]:
        import numpy as np

        p: FilterParams = ctx.params  # type: ignore[assignment]
        art = ctx.input("dataset")
        dd = load_dataset_dict(art)
        require_column(dd, p.text_column, "dataset", text=True)
        names = p.filter_names()
        specs_json = json.dumps([f.model_dump(mode="json") for f in p.filters])
        modifies = any(f.type in TEXT_MODIFYING for f in p.filters)
        costly = any(f.type not in CHEAP for f in p.filters)
        # build the filters once here, so a broken option fails before any work
        from .filters import _runners

        try:
            _runners(specs_json)
        except StageError:
            raise
        except Exception as e:  # noqa: BLE001
            raise StageError(f"cannot set up the filters: {type(e).__name__}: {e}") from e

        # the shard names carry the row ranges; these parameters do not change what a shard holds
        key = {"stage": "filter", "v": self.version, "layout": SHARD_LAYOUT,
               "params": p.model_dump(mode="json", exclude={"num_proc", "shard_size"}),
               "input": artifact_identity(art)}
        store = ShardStore(ctx.checkpoint_dir / "filter-shards", key, ctx.log)
        plan = plan_dataset(dd, p.text_column, p.shard_size, p.num_proc,
                            min_bytes=AUTO_PARALLEL_MIN_BYTES_COSTLY if costly else AUTO_PARALLEL_MIN_BYTES)
        total_docs = plan.rows
        removed = np.zeros(len(names), dtype=np.int64)
        reasons: dict[str, int] = {}
        with ctx.progress("filter", total=total_docs) as prog:
            def done(name: str, meta: dict[str, Any], rows: int) -> None:
                for k, v in meta["reasons"].items():
                    idx, why = k.split(":", 1)
                    removed[int(idx)] += v
                    rk = f"{names[int(idx)]}.{why or 'removed'}"
                    reasons[rk] = reasons.get(rk, 0) + v
                prog.advance(rows)

            map_shards(store, plan, _filter_shard,
                       {"specs_json": specs_json, "text_column": p.text_column, "modifies": modifies,
                        "batch_size": p.batch_size},
                       what="filtering", on_done=done)

        streams = {split: (ds, _kept(plan.tables[split], [store.path(n) for n in plan.names(split)],
                                     p.text_column, modifies))
                   for split, ds in dd.items()}
        out = ctx.output_path("dataset")
        out_splits = save_streamed(streams, out)
        for split, ds in dd.items():
            ctx.metrics[f"{split}_documents_in"] = len(ds)
            ctx.metrics[f"{split}_documents_out"] = len(out_splits[split])

        if len(out_splits.get("train", [])) == 0:
            ctx.log.warning("the filters removed every training document")
        m = ctx.metrics
        m["documents_in"] = total_docs
        m["documents_out"] = sum(len(d) for d in out_splits.values())
        for name, n in zip(names, removed):
            m[f"removed.{name}"] = int(n)
        for k in sorted(reasons):
            m[f"reasons.{k}"] = reasons[k]
        m["shards_reused"] = store.reused
        m["shards_computed"] = store.computed
        order_metrics(ctx.metrics, ['documents_in', 'documents_out', 'removed.'])
        meta = dict(art.meta)
        meta["splits"] = {s: len(d) for s, d in out_splits.items()}
        return {"dataset": Artifact(DATASET, out, meta=meta)}


def _filter_shard(table: Any, tmp: Path, specs_json: str, text_column: str, modifies: bool,
                  batch_size: int) -> dict[str, Any]:
    """One shard: ``drop.npy`` (index of the filter that removed each document,
    -1 if kept), the edited texts when a filter edits, and removal counts."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from .filters import filter_batch

    table = table.select([text_column])
    results = [filter_batch(table.slice(a, batch_size), specs_json, text_column, modifies)
               for a in range(0, table.num_rows, batch_size)]
    res = pa.concat_tables(results) if results else None
    drop = res.column("_drop").to_numpy().astype(np.int16) if res is not None else np.zeros(0, np.int16)
    np.save(tmp / "drop.npy", drop)
    counts: dict[str, int] = {}
    if res is not None:
        dropped = res.filter(pc.greater_equal(res.column("_drop"), 0))
        for row in pc.value_counts(pc.binary_join_element_wise(
                pc.cast(dropped.column("_drop"), "string"), dropped.column("_reason"), ":")).to_pylist():
            counts[row["values"]] = row["counts"]
    if modifies:
        import pyarrow.feather as feather

        feather.write_feather(res.select([text_column]) if res is not None else
                              pa.table({text_column: pa.array([], pa.string())}), str(tmp / "text.arrow"),
                              compression="uncompressed")
    return {"rows": table.num_rows, "reasons": counts}


def _kept(table: Any, shard_paths: list[Path], text_column: str, modifies: bool) -> Any:
    """The kept rows, shard by shard (edited texts swapped in where a filter edits)."""
    import numpy as np

    a = 0
    for path in shard_paths:
        keep = np.load(path / "drop.npy") < 0
        part = table.slice(a, len(keep))
        a += len(keep)
        if modifies:
            import pyarrow.feather as feather

            text = feather.read_table(str(path / "text.arrow"), memory_map=True).column(text_column)
            part = part.set_column(part.schema.get_field_index(text_column), text_column, text)
        yield from kept_rows(part, keep)
