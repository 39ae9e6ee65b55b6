"""MinHash-LSH clustering of signatures."""

from __future__ import annotations

import numpy as np

from recipe_runner_stages.data.dedup.minhash import lsh_clusters


def test_lsh_clusters_union_transitively():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**32, size=(5, 128), dtype=np.uint64).astype(np.uint32)
    sig = np.concatenate([base, base[[1]], base[[1]], base[[4]]])  # 5, 6 copy row 1; 7 copies row 4
    labels = lsh_clusters(sig, threshold=0.8, verify=True)
    assert list(labels) == [0, 1, 2, 3, 4, 1, 1, 4]
