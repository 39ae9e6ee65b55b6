"""``dedup``: exact (hash of normalized text) and near-duplicate (MinHash-LSH)
document removal, global across all splits (train first: a validation
document that repeats a training document is removed from validation).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from recipe_runner.artifacts import DATASET, Artifact
from recipe_runner.stage import Input, Params, Stage, StageContext, StageError

from ._parallel import SHARD_LAYOUT, map_shards, plan_dataset
from ._util import (
    NumProc, ShardStore, artifact_identity, batch_size_field, kept_rows, load_dataset_dict, num_proc_field,
    order_metrics, require_column, save_streamed, shard_size_field, with_quiet_datasets,
)

Normalize = Literal["none", "whitespace", "lower", "alnum"]


class DedupParams(Params):
    exact: bool = Field(True, description="Remove documents whose normalized text is identical to an earlier one.")
    normalize: Normalize = Field(
        "whitespace",
        description=("Normalization before exact hashing: 'none' (the course: the text as is), 'whitespace' (runs of "
                     "whitespace become one space, ends stripped), 'lower' (whitespace + lowercase), 'alnum' (lower + "
                     "only letters, digits and spaces)."))
    near_duplicates: bool = Field(False, description="Also remove near-duplicates found by MinHash-LSH (datasketch).")
    threshold: float = Field(0.8, gt=0, lt=1, description="Jaccard similarity of shingle sets above which two documents are near-duplicates.")
    num_perm: int = Field(128, ge=8, le=1024, description="MinHash permutations (signature length). Memory: 4 bytes each per document.")
    shingle: Literal["word", "char"] = Field("word", description="Shingles are n-grams of words (lowercased, punctuation dropped) or of characters.")
    shingle_size: int = Field(5, ge=1, description="n of the shingle n-grams.")
    verify: bool = Field(
        True, description=("Keep an LSH candidate pair only when the signatures' estimated Jaccard similarity reaches the "
                           "threshold (fewer false positives)."))
    minhash_seed: int = Field(1, description="Seed of the MinHash permutations.")
    text_column: str = Field("text", description="Column holding the text.")
    num_proc: NumProc = num_proc_field()
    batch_size: int = batch_size_field()
    shard_size: int = shard_size_field()

    @model_validator(mode="after")
    def _some(self) -> "DedupParams":
        if not self.exact and not self.near_duplicates:
            raise ValueError("nothing to do: set exact and/or near_duplicates")
        return self


_WS = re.compile(r"\s+")
_NON_ALNUM = re.compile(r"[^\w\s]|_")
_WORD = re.compile(r"\w+")


def normalize_text(t: str, how: str) -> str:
    if how == "none":
        return t
    if how == "whitespace":
        return " ".join(t.split())
    if how == "lower":
        return " ".join(t.lower().split())
    return " ".join(_NON_ALNUM.sub(" ", t.lower()).split())


def shingles(t: str, kind: str, n: int) -> set[bytes]:
    if kind == "word":
        words = _WORD.findall(t.lower())
        if not words:
            return set()
        if len(words) <= n:
            return {" ".join(words).encode()}
        return {" ".join(words[i: i + n]).encode() for i in range(len(words) - n + 1)}
    s = " ".join(t.lower().split())
    if not s:
        return set()
    if len(s) <= n:
        return {s.encode()}
    return {s[i: i + n].encode() for i in range(len(s) - n + 1)}


def dedup_batch(table: Any, text_column: str, exact: bool, normalize: str, near: bool, num_perm: int,
                shingle: str, shingle_size: int, seed: int) -> Any:
    """Batched map function: a 64-bit hash of each normalized text, and the
    MinHash signature of its shingles (empty shingle set: no signature)."""
    import numpy as np
    import pyarrow as pa
    import xxhash

    texts = table.column(text_column).combine_chunks().fill_null("").to_pylist()
    out: dict[str, Any] = {}
    if exact:
        h = np.fromiter((xxhash.xxh3_64_intdigest(normalize_text(t, normalize).encode("utf-8", "surrogatepass"))
                         for t in texts), dtype=np.uint64, count=len(texts))
        out["_h"] = pa.array(h, pa.uint64())
    if near:
        from datasketch import MinHash

        sets = [shingles(t, shingle, shingle_size) for t in texts]
        sigs = MinHash.bulk(sets, num_perm=num_perm, seed=seed, hashfunc=xxhash.xxh32_intdigest)
        mat = np.stack([m.hashvalues for m in sigs]).astype(np.uint32) if sigs else np.zeros((0, num_perm), np.uint32)
        out["_sig"] = pa.FixedSizeListArray.from_arrays(pa.array(mat.ravel(), pa.uint32()), num_perm)
        out["_nsh"] = pa.array(np.fromiter((len(s) for s in sets), dtype=np.int32, count=len(sets)), pa.int32())
    return pa.table(out)


def _hash_shard(table: Any, tmp: Path, batch_size: int, **kw: Any) -> dict[str, Any]:
    """One shard: ``hash.npy`` (exact) and ``sig.npy``/``nsh.npy`` (MinHash)."""
    import numpy as np
    import pyarrow as pa

    res = [dedup_batch(table.slice(a, batch_size), **kw) for a in range(0, table.num_rows, batch_size)]
    res = pa.concat_tables(res) if res else None
    if kw["exact"]:
        np.save(tmp / "hash.npy", res.column("_h").to_numpy() if res is not None else np.zeros(0, np.uint64))
    if kw["near"]:
        if res is not None:
            flat = res.column("_sig").combine_chunks().flatten().to_numpy()
            np.save(tmp / "sig.npy", flat.reshape(-1, kw["num_perm"]))
            np.save(tmp / "nsh.npy", res.column("_nsh").to_numpy())
        else:
            np.save(tmp / "sig.npy", np.zeros((0, kw["num_perm"]), np.uint32))
            np.save(tmp / "nsh.npy", np.zeros(0, np.int32))
    return {"rows": table.num_rows}


def lsh_clusters(sig: Any, threshold: float, verify: bool) -> Any:
    """Connected components of the LSH candidate graph over signature rows.

    Bands/rows come from datasketch's optimal parameters for ``threshold``;
    within each band, rows with identical band values are linked to the
    bucket's first row.  Returns a label per row (rows in the same cluster
    share the label, which is the cluster's smallest row index)."""
    import numpy as np
    from datasketch.lsh import _optimal_param

    m, p = sig.shape
    labels = np.arange(m, dtype=np.int64)
    if m < 2:
        return labels
    b, r = _optimal_param(threshold, p, 0.5, 0.5)
    src, dst = [], []
    for band in range(b):
        cols = np.ascontiguousarray(sig[:, band * r: (band + 1) * r])
        keys = cols.view(np.dtype((np.void, cols.dtype.itemsize * r))).ravel()
        _, inv = np.unique(keys, return_inverse=True)
        order = np.argsort(inv, kind="stable")
        sinv = inv[order]
        start = np.flatnonzero(np.concatenate(([True], sinv[1:] != sinv[:-1])))
        first_of = np.repeat(order[start], np.diff(np.concatenate((start, [m]))))
        linked = first_of != order
        if linked.any():
            src.append(order[linked])
            dst.append(first_of[linked])
    if not src:
        return labels
    a = np.concatenate(src)
    c = np.concatenate(dst)
    pairs = np.unique(np.stack([a, c], axis=1), axis=0)
    a, c = pairs[:, 0], pairs[:, 1]
    if verify:
        est = np.empty(len(a))
        for s in range(0, len(a), 65536):  # bounded memory
            est[s: s + 65536] = (sig[a[s: s + 65536]] == sig[c[s: s + 65536]]).mean(axis=1)
        ok = est >= threshold
        a, c = a[ok], c[ok]
    # union-find by min-label propagation with pointer jumping
    while len(a):
        before = labels.copy()
        lo = np.minimum(labels[a], labels[c])
        np.minimum.at(labels, a, lo)
        np.minimum.at(labels, c, lo)
        labels = labels[labels]
        while True:
            nxt = labels[labels]
            if np.array_equal(nxt, labels):
                break
            labels = nxt
        if np.array_equal(before, labels):
            break
    return labels


class DedupStage(Stage):
    name = "dedup"
    version = "1"
    description = ("Remove exact duplicates (hash of normalized text) and near-duplicates (MinHash-LSH, datasketch), "
                   "globally across splits; metrics count duplicates and clusters removed.")
    Params = DedupParams
    inputs = {"dataset": Input(DATASET, description="Documents to deduplicate.")}
    outputs = {"dataset": DATASET}

    @with_quiet_datasets
    def run(self, ctx: StageContext) -> dict[str, Artifact]:
        import numpy as np

        p: DedupParams = ctx.params  # type: ignore[assignment]
        art = ctx.input("dataset")
        dd = load_dataset_dict(art)
        require_column(dd, p.text_column, "dataset", text=True)
        # the shard names carry the row ranges; these parameters do not change what a shard holds
        key = {"stage": "dedup", "v": self.version, "layout": SHARD_LAYOUT,
               "params": p.model_dump(mode="json", exclude={"num_proc", "shard_size", "batch_size", "threshold", "verify"}),
               "input": artifact_identity(art)}
        store = ShardStore(ctx.checkpoint_dir / "dedup-shards", key, ctx.log)
        fn_kwargs = {"text_column": p.text_column, "exact": p.exact, "normalize": p.normalize,
                     "near": p.near_duplicates, "num_perm": p.num_perm, "shingle": p.shingle,
                     "shingle_size": p.shingle_size, "seed": p.minhash_seed}
        plan = plan_dataset(dd, p.text_column, p.shard_size, p.num_proc)
        total = plan.rows
        with ctx.progress("dedup: hashing", total=total) as prog:
            map_shards(store, plan, _hash_shard, {**fn_kwargs, "batch_size": p.batch_size},
                       what="hashing", on_done=lambda name, meta, rows: prog.advance(rows))
        paths = [store.path(name) for name in plan.names()]
        hashes = [np.load(path / "hash.npy") for path in paths] if p.exact else []
        sigs = [np.load(path / "sig.npy") for path in paths] if p.near_duplicates else []
        nsh = [np.load(path / "nsh.npy") for path in paths] if p.near_duplicates else []

        n = total
        keep = np.ones(n, dtype=bool)
        m = ctx.metrics
        if p.exact:
            h = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
            _, first = np.unique(h, return_index=True)
            exact_keep = np.zeros(n, dtype=bool)
            exact_keep[first] = True
            m["exact_duplicates_removed"] = int(n - exact_keep.sum())
            keep &= exact_keep
        if p.near_duplicates:
            sig = np.concatenate(sigs) if sigs else np.zeros((0, p.num_perm), np.uint32)
            has = np.concatenate(nsh) > 0 if nsh else np.zeros(0, bool)
            cand = np.flatnonzero(keep & has)
            with ctx.progress("dedup: MinHash-LSH", total=None):
                labels = lsh_clusters(sig[cand], p.threshold, p.verify)
            is_rep = labels == np.arange(len(cand))
            removed = cand[~is_rep]
            keep[removed] = False
            sizes = np.bincount(labels, minlength=len(cand))
            m["near_duplicates_removed"] = int(len(removed))
            m["near_duplicate_clusters"] = int((sizes > 1).sum())
            m["documents_without_shingles"] = int((~has).sum())

        streams = {}
        offset = 0
        for split, ds in dd.items():
            k = keep[offset: offset + len(ds)]
            streams[split] = (ds, kept_rows(plan.tables[split], k))
            m[f"{split}_documents_in"] = len(ds)
            m[f"{split}_documents_out"] = int(k.sum())
            offset += len(ds)
        if "train" in streams and m["train_documents_out"] == 0:
            raise StageError("deduplication left no training documents")
        out = ctx.output_path("dataset")
        out_splits = save_streamed(streams, out)
        m["documents_in"] = n
        m["documents_out"] = int(keep.sum())
        m["shards_reused"] = store.reused
        m["shards_computed"] = store.computed
        order_metrics(ctx.metrics, ['documents_in', 'documents_out', 'exact_duplicates_removed', 'near_duplicates_removed', 'near_duplicate_clusters'])
        meta = dict(art.meta)
        meta["splits"] = {s: len(d) for s, d in out_splits.items()}
        return {"dataset": Artifact(DATASET, out, meta=meta)}
