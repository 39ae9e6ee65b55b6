"""``filter``: an ordered list of document filters; metrics count the
documents each one removed.  The filters themselves are in ``filters.py``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field

from recipe_runner.artifacts import DATASET, Artifact
from recipe_runner.stage import Input, Params, Stage, StageContext, StageError

from ._util import (
    order_metrics,
    AUTO_PARALLEL_MIN_BYTES, AUTO_PARALLEL_MIN_BYTES_COSTLY,
    NumProc, ShardStore, arrow_map, artifact_identity, batch_size_field, load_arrow, load_dataset_dict,
    num_proc_field, with_quiet_datasets, require_column, resolve_num_proc, save_arrow, save_dataset_dict,
    shard_ranges, shard_size_field, table_nbytes,
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
        from datasets import concatenate_datasets

        p: FilterParams = ctx.params  # type: ignore[assignment]
        art = ctx.input("dataset")
        dd = load_dataset_dict(art)
        require_column(dd, p.text_column, "dataset")
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

        key = {"stage": "filter", "v": self.version, "params": p.model_dump(mode="json"),
               "input": artifact_identity(art)}
        store = ShardStore(ctx.checkpoint_dir / "filter-shards", key, ctx.log)
        removed = np.zeros(len(names), dtype=np.int64)
        reasons: dict[str, int] = {}
        out_splits = {}
        total_docs = sum(len(d) for d in dd.values())
        with ctx.progress("filter", total=total_docs) as prog:
            for split, ds in dd.items():
                ranges = shard_ranges(len(ds), p.shard_size)
                masks, texts = [], []
                for si, (a, b) in enumerate(ranges):
                    part = ds.select(range(a, b))

                    def write(tmp: Path, part: Any = part) -> dict[str, Any]:
                        nproc = resolve_num_proc(p.num_proc, table_nbytes(part), len(part),
                                                 min_bytes=AUTO_PARALLEL_MIN_BYTES_COSTLY if costly
                                                 else AUTO_PARALLEL_MIN_BYTES)
                        res = arrow_map(part, _filter_fn, store.scratch, num_proc=nproc, batch_size=p.batch_size,
                                        fn_kwargs={"specs_json": specs_json, "text_column": p.text_column,
                                                   "modifies": modifies},
                                        remove_columns=part.column_names,
                                        input_columns=[p.text_column])
                        tab = res.with_format("arrow")[:] if len(res) else None
                        drop = tab.column("_drop").to_numpy().astype(np.int16) if tab is not None else \
                            np.zeros(0, np.int16)
                        np.save(tmp / "drop.npy", drop)
                        counts: dict[str, int] = {}
                        if tab is not None:
                            import pyarrow.compute as pc

                            dropped = pc.filter(tab, pc.greater_equal(tab.column("_drop"), 0))
                            for row in pc.value_counts(pc.binary_join_element_wise(
                                    pc.cast(dropped.column("_drop"), "string"), dropped.column("_reason"), ":"
                            )).to_pylist():
                                counts[row["values"]] = row["counts"]
                        if modifies:
                            save_arrow(res.select_columns([p.text_column]), tmp / "text.arrow")
                        return {"rows": len(part), "reasons": counts}

                    try:
                        path, meta = store.get_or_make(f"{split}-{si:05d}", write)
                    except StageError:
                        raise
                    except Exception as e:  # noqa: BLE001 - finished shards stay in the checkpoint
                        raise StageError(
                            f"filtering failed in split {split!r}, documents {a}..{b - 1}: {type(e).__name__}: {e} "
                            f"({store.computed + store.reused} finished shard(s) are kept and reused on the next run)"
                        ) from e
                    masks.append(np.load(path / "drop.npy"))
                    if modifies:
                        texts.append(load_arrow(path / "text.arrow"))
                    for k, v in meta["reasons"].items():
                        idx, why = k.split(":", 1)
                        removed[int(idx)] += v
                        rk = f"{names[int(idx)]}.{why or 'removed'}"
                        reasons[rk] = reasons.get(rk, 0) + v
                    prog.advance(b - a)
                drop = np.concatenate(masks) if masks else np.zeros(0, np.int16)
                keep_idx = np.flatnonzero(drop < 0)
                if modifies and len(keep_idx):
                    new_text = (concatenate_datasets(texts) if len(texts) > 1 else texts[0]).select(keep_idx)
                    rest = ds.remove_columns([p.text_column]).select(keep_idx)
                    kept = concatenate_datasets([new_text, rest], axis=1) if rest.column_names else new_text
                    kept = kept.select_columns(ds.column_names)
                else:
                    kept = ds.select(keep_idx) if len(keep_idx) < len(ds) else ds
                out_splits[split] = kept
                ctx.metrics[f"{split}_documents_in"] = len(ds)
                ctx.metrics[f"{split}_documents_out"] = len(kept)

        if len(out_splits.get("train", [])) == 0:
            ctx.log.warning("the filters removed every training document")
        out = ctx.output_path("dataset")
        save_dataset_dict(out_splits, out)
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


def _filter_fn(table: Any, specs_json: str, text_column: str, modifies: bool) -> Any:
    from .filters import filter_batch

    return filter_batch(table, specs_json, text_column, modifies)
