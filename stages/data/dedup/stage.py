"""``dedup``: exact (hash of normalized text) and near-duplicate (MinHash-LSH)
document removal, global across all splits (train first: a validation
document that repeats a training document is removed from validation).
The global decisions are made in memory or, past ``max_memory_mb``, in
passes over partition files on disk (:mod:`.multi_pass`): the same documents
are removed either way.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from recipe_runner import DATASET, Artifact, Input, Params, Stage, StageContext, StageError, run_setting

from ..arrow_io import kept_rows, save_streamed
from ..inputs import load_documents
from ..metrics import order_metrics
from ..params import Executor, NumProc, batch_size_field, executor_field, num_proc_field, shard_size_field
from ..progress_bars import with_quiet_datasets
from ..shards import ShardPlan, open_shard_store, plan_dataset
from ..workers import map_shards
from .exact import Normalize, first_occurrences
from .hash_shards import HashSettings, hash_shard, load_hashes, load_signatures
from .minhash import lsh_clusters
from .multi_pass import exact_keep_partitioned, near_keep_multi_pass


class DedupParams(Params):
    exact: bool = Field(True, description="Remove documents whose normalized text is identical to an earlier one.")
    normalize: Normalize = Field(
        "whitespace",
        description=(
            "Normalization before exact hashing: 'none' (the course: the text as is), 'whitespace' (runs of "
            "whitespace become one space, ends stripped), 'lower' (whitespace + lowercase), 'alnum' (lower + "
            "only letters, digits and spaces)."
        ),
    )
    near_duplicates: bool = Field(False, description="Also remove near-duplicates found by MinHash-LSH (datasketch).")
    threshold: float = Field(
        0.8,
        gt=0,
        lt=1,
        allow_inf_nan=False,
        description="Jaccard similarity of shingle sets above which two documents are near-duplicates.",
    )
    num_perm: int = Field(
        128, ge=8, le=1024, description="MinHash permutations (signature length). Memory: 4 bytes each per document."
    )
    shingle: Literal["word", "char"] = Field(
        "word", description="Shingles are n-grams of words (lowercased, punctuation dropped) or of characters."
    )
    shingle_size: int = Field(5, ge=1, le=1000, description="n of the shingle n-grams (1 to 1000).")
    verify: bool = Field(
        True,
        description=(
            "Keep an LSH candidate pair only when the signatures' estimated Jaccard similarity reaches the "
            "threshold (fewer false positives)."
        ),
    )
    minhash_seed: int = Field(
        1, ge=0, le=2**32 - 1, description="Seed of the MinHash permutations (0 to 2**32 - 1, as numpy takes it)."
    )
    method: Literal["auto", "in_memory", "multi_pass"] = run_setting(
        "auto",
        description=(
            "How the duplicates are found: 'in_memory' (every hash and signature in memory at once), "
            "'multi_pass' (passes over partition files on disk, working memory bounded by max_memory_mb), or "
            "'auto' (in_memory when its estimated memory fits in max_memory_mb). A run setting: both remove "
            "the same documents."
        ),
    )
    max_memory_mb: int = run_setting(
        1024,
        ge=1,
        le=2**20,
        description=(
            "Working memory (MiB) of the global dedup passes: 'auto' picks multi_pass above it, and multi_pass "
            "sizes its partitions and batches to it. A run setting: it does not change the output."
        ),
    )
    text_column: str = Field("text", description="Column holding the text.")
    num_proc: NumProc = num_proc_field()
    batch_size: int = batch_size_field()
    shard_size: int = shard_size_field()
    executor: Executor = executor_field()

    @model_validator(mode="after")
    def _some(self) -> DedupParams:
        if not self.exact and not self.near_duplicates:
            raise ValueError("nothing to do: set exact and/or near_duplicates")
        return self

    def multi_pass(self, documents: int) -> bool:
        """Whether the global passes go through disk: asked for, or 'auto'
        and the in-memory path's estimated peak (hashes and their sort; the
        signatures, their candidates' copy and a band's sort) passes max_memory_mb."""
        if self.method != "auto":
            return self.method == "multi_pass"
        per_doc = (32 if self.exact else 0) + (12 * self.num_perm if self.near_duplicates else 0)
        return documents * per_doc > self.max_memory_mb * 2**20

    def hash_settings(self) -> HashSettings:
        return HashSettings(
            text_column=self.text_column,
            exact=self.exact,
            normalize=self.normalize,
            near=self.near_duplicates,
            num_perm=self.num_perm,
            shingle=self.shingle,
            shingle_size=self.shingle_size,
            seed=self.minhash_seed,
        )


class DedupStage(Stage[DedupParams]):
    name = "dedup"
    version = "1"
    description = (
        "Remove exact duplicates (hash of normalized text) and near-duplicates (MinHash-LSH, datasketch), "
        "globally across splits; metrics count duplicates and clusters removed."
    )
    Params = DedupParams
    inputs = {"dataset": Input(DATASET, description="Documents to deduplicate.")}
    outputs = {"dataset": DATASET}

    @with_quiet_datasets
    def run(self, ctx: StageContext[DedupParams]) -> dict[str, Artifact]:
        import numpy as np

        p = ctx.params
        art, dd = load_documents(ctx, p.text_column)
        # the LSH threshold and verification act on the signatures, after the shards
        store = open_shard_store(ctx, "dedup", self.version, p, art, exclude={"threshold", "verify"})
        plan = plan_dataset(dd, p.text_column, p.shard_size, p.num_proc, executor=p.executor)
        with ctx.progress("dedup: hashing", total=plan.rows) as prog:
            map_shards(
                store,
                plan,
                hash_shard,
                {"settings": p.hash_settings(), "batch_size": p.batch_size},
                what="hashing",
                on_done=lambda name, meta, rows: prog.advance(rows),
            )
        shard_dirs = [store.path(name) for name in plan.names()]
        m = ctx.metrics
        keep = np.ones(plan.rows, dtype=bool)
        if p.multi_pass(plan.rows):
            ctx.log.info("dedup: multi-pass on disk, working memory bounded by %d MiB", p.max_memory_mb)
            with ctx.progress("dedup: multi-pass", total=None):
                m.update(_dedup_on_disk(keep, shard_dirs, store.scratch / "passes", p))
        else:
            if p.exact:
                exact_keep = first_occurrences(load_hashes(shard_dirs))
                m["exact_duplicates_removed"] = int(plan.rows - exact_keep.sum())
                keep &= exact_keep
            if p.near_duplicates:
                with ctx.progress("dedup: MinHash-LSH", total=None):
                    m.update(_remove_near_duplicates(keep, *load_signatures(shard_dirs, p.num_perm), p))
        out = ctx.output_path("dataset")
        out_splits = save_streamed(_kept_streams(dd, plan, keep, m), out)
        m["documents_in"] = plan.rows
        m["documents_out"] = int(keep.sum())
        m["shards_reused"] = store.reused
        m["shards_computed"] = store.computed
        order_metrics(
            m,
            [
                "documents_in",
                "documents_out",
                "exact_duplicates_removed",
                "near_duplicates_removed",
                "near_duplicate_clusters",
            ],
        )
        meta = {**art.meta, "splits": {s: len(d) for s, d in out_splits.items()}}
        return {"dataset": Artifact(DATASET, out, meta=meta)}


def _dedup_on_disk(keep: Any, shard_dirs: list[Any], work: Any, p: DedupParams) -> dict[str, int]:
    """Clear ``keep`` (in place) as the in-memory path does, in passes over
    files under ``work`` (removed afterwards); return the counts."""
    import shutil

    budget = p.max_memory_mb * 2**20
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    m: dict[str, int] = {}
    try:
        if p.exact:
            exact_keep_partitioned(shard_dirs, keep, work, budget)
            m["exact_duplicates_removed"] = int(len(keep) - keep.sum())
        if p.near_duplicates:
            m.update(near_keep_multi_pass(shard_dirs, keep, p.threshold, p.verify, p.num_perm, work, budget))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return m


def _remove_near_duplicates(keep: Any, sig: Any, has_shingles: Any, p: DedupParams) -> dict[str, int]:
    """Clear ``keep`` (in place) for every kept document with shingles that
    is not the first of its near-duplicate cluster; return the counts."""
    import numpy as np

    candidates = np.flatnonzero(keep & has_shingles)
    labels = lsh_clusters(sig[candidates], p.threshold, p.verify)
    is_first = labels == np.arange(len(candidates))
    removed = candidates[~is_first]
    keep[removed] = False
    sizes = np.bincount(labels, minlength=len(candidates))
    return {
        "near_duplicates_removed": int(len(removed)),
        "near_duplicate_clusters": int((sizes > 1).sum()),
        "documents_without_shingles": int((~has_shingles).sum()),
    }


def _kept_streams(dd: Any, plan: ShardPlan, keep: Any, m: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Per split: (the input split, its kept rows); counts each split's documents in ``m``."""
    streams = {}
    offset = 0
    for split, ds in dd.items():
        k = keep[offset : offset + len(ds)]
        streams[split] = (ds, kept_rows(plan.tables[split], k))
        m[f"{split}_documents_in"] = len(ds)
        m[f"{split}_documents_out"] = int(k.sum())
        offset += len(ds)
    if "train" in streams and m["train_documents_out"] == 0:
        raise StageError("deduplication left no training documents")
    return streams
