"""Dedup at scale: the same decisions as the in-memory path (:mod:`.exact`,
:func:`.minhash.lsh_clusters`), made in passes over files on disk so that
memory is bounded by a budget instead of by the corpus.

- exact: every document's ``(hash, row)`` is spilled into P partition files
  by hash; each partition is deduplicated on its own (equal hashes share a
  partition, rows are appended in document order, so the first occurrence
  is found within the partition);
- near (the datatrove / NeMo-Curator way): the signatures of the candidates
  (documents kept so far that have shingles) are copied into one file on
  disk (pass 1, after the per-shard signatures); for one band at a time, its
  ``(band values, candidate)`` records are spilled into partitions by their
  first band value and each partition's buckets link every member to the
  bucket's first candidate (pass 2, :func:`.minhash.band_links`, the code the
  in-memory path runs); the pairs are verified against the threshold by the
  signatures' estimated Jaccard similarity and merged by union-find (pass 3);
  every candidate that is not the first of its cluster is removed (pass 4).

The budget bounds each pass's working arrays; what stays is one byte per
document (the keep mask the stage writes the output with) and, in pass 3,
two int64 per document that has a near-duplicate (the union-find forest).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .exact import first_occurrences
from .minhash import _connected_components, band_links, bands_and_rows

#: partition files written at once (a scan per group of this many keeps open files bounded)
MAX_OPEN_FILES = 128
#: bytes of working memory per record of an exact partition (hash and row, their sort)
EXACT_BYTES_PER_DOC = 64

#: ``chunks() -> iterator of record arrays``: one scan over the records, in document order
Chunks = Callable[[], Iterator[Any]]


def partition_count(records: int, bytes_per_record: int, budget: int) -> int:
    """How many partitions keep each one's working memory within ``budget``."""
    return max(1, math.ceil(records * bytes_per_record / max(1, budget)))


def chunk_rows(bytes_per_row: int, budget: int) -> int:
    """Rows read per step of a scan: an eighth of the budget (at least 256
    rows), for the copies a scan makes of them (selection, sorting, writing)."""
    return max(256, budget // (8 * max(1, bytes_per_row)))


def spill(chunks: Chunks, part_of: Callable[[Any], Any], parts: int, work: Path, prefix: str) -> Iterator[Any]:
    """Write the records ``chunks()`` yields into ``parts`` files by
    ``part_of(records)`` (at most :data:`MAX_OPEN_FILES` at once: a scan per
    group) and yield each partition's records, in their original order; each
    file is deleted once read."""
    import numpy as np

    for g in range(0, parts, MAX_OPEN_FILES):
        group = range(g, min(g + MAX_OPEN_FILES, parts))
        files = [work / f"{prefix}-{q:06d}.bin" for q in group]
        dtype = None
        with ExitStack() as stack:
            handles = [stack.enter_context(open(f, "wb")) for f in files]
            for rec in chunks():
                dtype = rec.dtype
                q = np.asarray(part_of(rec), dtype=np.int64) - g
                inside = (q >= 0) & (q < len(files))
                rec, q = rec[inside], q[inside]
                order = np.argsort(q, kind="stable")
                bounds = np.searchsorted(q[order], np.arange(len(files) + 1))
                for k, h in enumerate(handles):
                    if bounds[k + 1] > bounds[k]:
                        rec[order[bounds[k] : bounds[k + 1]]].tofile(h)
        for f in files:
            out = np.fromfile(f, dtype=dtype) if dtype is not None else None
            f.unlink()
            if out is not None and len(out):
                yield out


def shard_lengths(shard_dirs: list[Path], name: str) -> list[int]:
    """Documents in each shard (the length of its ``name`` array, read by its header)."""
    import numpy as np

    return [int(np.load(d / name, mmap_mode="r").shape[0]) for d in shard_dirs]


def exact_keep_partitioned(shard_dirs: list[Path], keep: Any, work: Path, budget: int) -> int:
    """Clear ``keep`` for every document whose hash (``hash.npy`` of the
    shards, in row order) an earlier document has; return the partition count."""
    import numpy as np

    dtype = np.dtype([("h", "<u8"), ("i", "<i8")])
    step = chunk_rows(dtype.itemsize, budget)

    def chunks() -> Iterator[Any]:
        offset = 0
        for d in shard_dirs:
            h = np.load(d / "hash.npy", mmap_mode="r")
            for s in range(0, len(h), step):
                rec = np.empty(min(step, len(h) - s), dtype)
                rec["h"] = h[s : s + len(rec)]
                rec["i"] = np.arange(offset + s, offset + s + len(rec))
                yield rec
            offset += len(h)

    parts = partition_count(len(keep), EXACT_BYTES_PER_DOC, budget)
    for rec in spill(chunks, lambda rec: rec["h"] % np.uint64(parts), parts, work, "exact"):
        keep[rec["i"][~first_occurrences(rec["h"])]] = False
    return parts


def near_keep_multi_pass(
    shard_dirs: list[Path], keep: Any, threshold: float, verify: bool, num_perm: int, work: Path, budget: int
) -> dict[str, int]:
    """Clear ``keep`` (in place) for every kept document with shingles that is
    not the first of its near-duplicate cluster, exactly as the in-memory path
    does; return its counts."""
    import numpy as np

    sig, ids, without = _candidates(shard_dirs, keep, num_perm, work, budget)
    pairs = _band_pairs(sig, ids, threshold, work, budget)
    nodes, labels = _clusters(pairs, sig, threshold if verify else None, work, budget)
    roots = labels == np.arange(len(labels))
    removed = np.sort(nodes[~roots])
    keep[np.asarray(ids[removed])] = False
    return {
        "near_duplicates_removed": int(len(removed)),
        "near_duplicate_clusters": int(roots.sum()),
        "documents_without_shingles": without,
    }


def _candidates(shard_dirs: list[Path], keep: Any, num_perm: int, work: Path, budget: int) -> tuple[Any, Any, int]:
    """Pass 1: the signatures of the candidates (kept, with shingles), in
    document order, copied into ``cand-sig.npy``, and their rows (``cand-ids.npy``),
    both memory-mapped; and the number of documents without shingles."""
    import numpy as np
    from numpy.lib.format import open_memmap

    def shards() -> Iterator[tuple[Path, int, Any]]:  # (shard, its first row, which of its documents have shingles)
        offset = 0
        for d in shard_dirs:
            has = np.load(d / "nsh.npy") > 0
            yield d, offset, has
            offset += len(has)

    total = without = 0
    for _, offset, has in shards():
        without += int((~has).sum())
        total += int((keep[offset : offset + len(has)] & has).sum())
    sig = open_memmap(work / "cand-sig.npy", mode="w+", dtype=np.uint32, shape=(total, num_perm))
    ids = open_memmap(work / "cand-ids.npy", mode="w+", dtype=np.int64, shape=(total,))
    step = chunk_rows(8 * num_perm, budget)
    at = 0
    for d, offset, has in shards():
        rows = np.flatnonzero(keep[offset : offset + len(has)] & has)
        src = np.load(d / "sig.npy", mmap_mode="r")
        for s in range(0, len(rows), step):
            part = rows[s : s + step]
            sig[at : at + len(part)] = src[part]
            ids[at : at + len(part)] = part + offset
            at += len(part)
    sig.flush()
    ids.flush()
    return sig, ids, without


def _band_pairs(sig: Any, ids: Any, threshold: float, work: Path, budget: int) -> Path:
    """Pass 2: for one band at a time, the candidates that share the band's
    values with an earlier one, linked to the first of their bucket:
    ``pairs.bin`` of (candidate, first candidate) int64 pairs."""
    import numpy as np

    n, num_perm = sig.shape
    b, r = bands_and_rows(threshold, num_perm)
    dtype = np.dtype([("k", "<u4", (r,)), ("i", "<i8")])
    # the records, their keys' contiguous and sorted copies, np.unique's and band_links' indices
    # (measured: about 290 bytes a record besides the records themselves for 13 rows a band)
    per_record = 5 * dtype.itemsize + 160
    parts = partition_count(n, per_record, budget)
    step = chunk_rows(dtype.itemsize, budget)
    out = work / "pairs.bin"
    with open(out, "wb") as f:
        for band in range(b):

            def chunks(band: int = band) -> Iterator[Any]:
                for s in range(0, n, step):
                    rec = np.empty(min(step, n - s), dtype)
                    rec["k"] = sig[s : s + len(rec), band * r : (band + 1) * r]
                    rec["i"] = np.arange(s, s + len(rec))
                    yield rec

            for rec in spill(chunks, lambda rec: rec["k"][:, 0] % np.uint32(parts), parts, work, f"band{band}"):
                src, dst = band_links(rec["k"])
                np.stack([rec["i"][src], rec["i"][dst]], axis=1).astype(np.int64).tofile(f)
    return out


def _clusters(pairs: Path, sig: Any, threshold: float | None, work: Path, budget: int) -> tuple[Any, Any]:
    """Pass 3: the candidate pairs whose signatures' estimated Jaccard
    similarity reaches ``threshold`` (all of them for None), merged by
    union-find: ``(nodes, labels)``, the candidates in some pair (sorted) and
    the position in ``nodes`` of the first candidate of each one's cluster."""
    import numpy as np

    step = chunk_rows(16 + 2 * 5 * sig.shape[1], budget)
    verified = work / "verified.bin"
    nodes = np.zeros(0, np.int64)
    with open(verified, "wb") as f:
        for ab in _read_pairs(pairs, step):
            if threshold is not None:
                est = (sig[ab[:, 0]] == sig[ab[:, 1]]).mean(axis=1)
                ab = ab[est >= threshold]
            ab.tofile(f)
            nodes = np.union1d(nodes, ab.ravel())
    pairs.unlink()
    labels = np.arange(len(nodes), dtype=np.int64)
    for ab in _read_pairs(verified, step):
        ra = labels[np.searchsorted(nodes, ab[:, 0])]
        rc = labels[np.searchsorted(nodes, ab[:, 1])]
        u = np.unique(np.concatenate([ra, rc]))
        local = _connected_components(np.arange(len(u)), np.searchsorted(u, ra), np.searchsorted(u, rc))
        labels[u] = u[local]
        labels = labels[labels]
    verified.unlink()
    return nodes, labels


def _read_pairs(path: Path, step: int) -> Iterator[Any]:
    """The int64 pairs of a file, ``step`` at a time, as (k, 2) arrays."""
    import numpy as np

    total = path.stat().st_size // 16
    for s in range(0, total, step):
        yield np.fromfile(path, dtype=np.int64, count=2 * min(step, total - s), offset=16 * s).reshape(-1, 2)
