"""Near duplicates: MinHash signatures of each document's shingles
(datasketch), banded LSH over all signatures with datasketch's optimal
(bands, rows) for the threshold, and the clusters of candidate pairs."""

from __future__ import annotations

import re
from typing import Any

_WORD = re.compile(r"\w+")

#: candidate pairs compared per step when verifying (bounds the memory)
_VERIFY_CHUNK = 65536


def shingles(t: str, kind: str, n: int) -> set[bytes]:
    """The n-grams of words (lowercased, punctuation dropped) or of characters
    (whitespace runs as one space); a text shorter than n is one shingle."""
    if kind == "word":
        words = _WORD.findall(t.lower())
        if not words:
            return set()
        if len(words) <= n:
            return {" ".join(words).encode()}
        return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}
    s = " ".join(t.lower().split())
    if not s:
        return set()
    if len(s) <= n:
        return {s.encode()}
    return {s[i : i + n].encode() for i in range(len(s) - n + 1)}


def minhash_signatures(texts: list[str], shingle: str, shingle_size: int, num_perm: int, seed: int) -> Any:
    """``(signatures, shingle counts)``: a (documents, num_perm) uint32 matrix
    and the number of shingles of each document (0: no signature)."""
    import numpy as np
    import xxhash
    from datasketch import MinHash

    sets = [shingles(t, shingle, shingle_size) for t in texts]
    sigs = MinHash.bulk(sets, num_perm=num_perm, seed=seed, hashfunc=xxhash.xxh32_intdigest)
    mat = np.stack([m.hashvalues for m in sigs]).astype(np.uint32) if sigs else np.zeros((0, num_perm), np.uint32)
    counts = np.fromiter((len(s) for s in sets), dtype=np.int32, count=len(sets))
    return mat, counts


def lsh_clusters(sig: Any, threshold: float, verify: bool) -> Any:
    """Connected components of the LSH candidate graph over signature rows.

    Bands/rows come from datasketch's optimal parameters for ``threshold``;
    within each band, rows with identical band values are linked to the
    bucket's first row.  Returns a label per row (rows in the same cluster
    share the label, which is the cluster's smallest row index)."""
    import numpy as np

    labels = np.arange(sig.shape[0], dtype=np.int64)
    if sig.shape[0] < 2:
        return labels
    a, c = _candidate_pairs(sig, threshold)
    if verify:
        a, c = _verified(sig, a, c, threshold)
    return _connected_components(labels, a, c)


def _candidate_pairs(sig: Any, threshold: float) -> tuple[Any, Any]:
    """Distinct (row, bucket's first row) pairs that share a band."""
    import numpy as np

    b, r = bands_and_rows(threshold, sig.shape[1])
    src, dst = [], []
    for band in range(b):
        s, d = band_links(sig[:, band * r : (band + 1) * r])
        if len(s):
            src.append(s)
            dst.append(d)
    if not src:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = np.unique(np.stack([np.concatenate(src), np.concatenate(dst)], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def bands_and_rows(threshold: float, num_perm: int) -> tuple[int, int]:
    """datasketch's optimal (bands, rows per band) for ``threshold`` (false
    positives and negatives weighted equally, as ``MinHashLSH`` does)."""
    from datasketch.lsh import _optimal_param

    b, r = _optimal_param(threshold, num_perm, 0.5, 0.5)
    return int(b), int(r)


def band_links(cols: Any) -> tuple[Any, Any]:
    """Rows ``cols`` (documents x the band's values) that share their band
    values with an earlier row, and the first such row of their bucket:
    ``(rows, first rows)`` as row positions."""
    import numpy as np

    cols = np.ascontiguousarray(cols)
    m, r = cols.shape
    if m < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys = cols.view(np.dtype((np.void, cols.dtype.itemsize * r))).ravel()
    _, inv = np.unique(keys, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    sinv = inv[order]
    start = np.flatnonzero(np.concatenate(([True], sinv[1:] != sinv[:-1])))
    first_of = np.repeat(order[start], np.diff(np.concatenate((start, [m]))))
    linked = first_of != order
    return order[linked], first_of[linked]


def _verified(sig: Any, a: Any, c: Any, threshold: float) -> tuple[Any, Any]:
    """The pairs whose signatures' estimated Jaccard similarity reaches the threshold."""
    import numpy as np

    est = np.empty(len(a))
    for s in range(0, len(a), _VERIFY_CHUNK):
        est[s : s + _VERIFY_CHUNK] = (sig[a[s : s + _VERIFY_CHUNK]] == sig[c[s : s + _VERIFY_CHUNK]]).mean(axis=1)
    ok = est >= threshold
    return a[ok], c[ok]


def _connected_components(labels: Any, a: Any, c: Any) -> Any:
    """Union-find by min-label propagation with pointer jumping."""
    import numpy as np

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
