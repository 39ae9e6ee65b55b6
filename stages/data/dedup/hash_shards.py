"""The per-shard pass of the dedup stage (in the worker pool): the exact
hash and the MinHash signature of every document, saved as numpy arrays;
and reading them back for the whole input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .exact import exact_hashes
from .minhash import minhash_signatures


@dataclass(frozen=True)
class HashSettings:
    """What a shard computes: exact hashes (of text normalized as
    ``normalize``) and/or MinHash signatures (``near``)."""

    text_column: str
    exact: bool
    normalize: str
    near: bool
    num_perm: int
    shingle: str
    shingle_size: int
    seed: int


def hash_shard(table: Any, tmp: Path, settings: HashSettings, batch_size: int) -> dict[str, Any]:
    """One shard: ``hash.npy`` (exact) and ``sig.npy``/``nsh.npy`` (MinHash)."""
    import numpy as np

    s = settings
    hashes, sigs, counts = [], [], []
    for a in range(0, table.num_rows, batch_size):
        texts = table.slice(a, batch_size).column(s.text_column).combine_chunks().fill_null("").to_pylist()
        if s.exact:
            hashes.append(exact_hashes(texts, s.normalize))
        if s.near:
            sig, n_shingles = minhash_signatures(texts, s.shingle, s.shingle_size, s.num_perm, s.seed)
            sigs.append(sig)
            counts.append(n_shingles)
    if s.exact:
        np.save(tmp / "hash.npy", np.concatenate(hashes) if hashes else np.zeros(0, np.uint64))
    if s.near:
        np.save(tmp / "sig.npy", np.concatenate(sigs) if sigs else np.zeros((0, s.num_perm), np.uint32))
        np.save(tmp / "nsh.npy", np.concatenate(counts) if counts else np.zeros(0, np.int32))
    return {"rows": table.num_rows}


def load_hashes(shard_dirs: list[Path]) -> Any:
    """The exact hashes of all shards, in row order."""
    import numpy as np

    parts = [np.load(d / "hash.npy") for d in shard_dirs]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint64)


def load_signatures(shard_dirs: list[Path], num_perm: int) -> tuple[Any, Any]:
    """``(signatures, has shingles)`` of all shards, in row order."""
    import numpy as np

    sigs = [np.load(d / "sig.npy") for d in shard_dirs]
    counts = [np.load(d / "nsh.npy") for d in shard_dirs]
    sig = np.concatenate(sigs) if sigs else np.zeros((0, num_perm), np.uint32)
    has = np.concatenate(counts) > 0 if counts else np.zeros(0, bool)
    return sig, has
