"""Mixing the sources' documents by counts or weights (seeded samples) and
splitting off a seeded validation set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from recipe_runner import StageError

from .specs import SourceOptions


def align_columns(parts: list[Any], names: list[str]) -> list[Any]:
    """Give every source the same columns (text, source, then each kept
    column in order of first appearance; nulls where a source lacks one)."""
    import pyarrow as pa
    from datasets import Features

    union: dict[str, Any] = {}
    for name, d in zip(names, parts, strict=True):
        for c, f in d.features.items():
            if c in ("text", "source"):
                continue
            if c in union and union[c] != f:
                raise StageError(
                    f"the kept column {c!r} has type {f} in source {name!r} but {union[c]} in an "
                    "earlier source; keep it from sources that agree, or convert the data"
                )
            union.setdefault(c, f)
    if not union:
        return parts
    out = []
    for d in parts:
        for c, f in union.items():
            if c not in d.column_names:
                d = d.add_column(c, pa.nulls(len(d), Features({c: f}).arrow_schema.field(c).type), feature=f)
        out.append(d.select_columns(["text", "source", *union]))
    return out


def plan_counts(avail: Sequence[int], sources: Sequence[SourceOptions], total: int | None) -> list[int]:
    """How many documents each source contributes to the mix: its ``count``
    (default: all it has), or its share of ``total`` by weight (default
    total: the largest mix that repeats no source)."""
    weights = [s.weight for s in sources]
    if not all(w is not None for w in weights):
        return [s.count if s.count is not None else a for s, a in zip(sources, avail, strict=True)]
    shares = [float(w or 0) / sum(float(w or 0) for w in weights) for w in weights]
    if total is None:
        total = min(int(a / q) for a, q in zip(avail, shares, strict=True))
    raw = [total * q for q in shares]
    counts = [int(x) for x in raw]
    # largest remainders get the leftover documents, so the counts sum to total
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[: total - sum(counts)]:
        counts[i] += 1
    return counts


def sample_indices(n: int, k: int, rng: Any) -> Any:
    """k indices into n documents: a sorted sample without replacement, or whole
    passes plus a sorted sample when k > n."""
    import numpy as np

    if n == 0 or k == 0:
        return np.zeros(0, dtype=np.int64)
    if k == n:
        return np.arange(n, dtype=np.int64)
    passes, rest = divmod(k, n)
    parts = [np.arange(n, dtype=np.int64)] * passes
    if rest:
        parts.append(np.sort(rng.choice(n, size=rest, replace=False)).astype(np.int64))
    return np.concatenate(parts)


def split_indices(n: int, validation: float | int | None, rng: Any) -> tuple[Any, Any]:
    """(train rows, validation rows or None), both sorted: ``validation`` is a
    fraction of ``n`` or a count, drawn at random."""
    import numpy as np

    if not validation:
        return np.arange(n, dtype=np.int64), None
    n_val = int(round(n * validation)) if isinstance(validation, float) else int(validation)
    n_val = max(1, n_val)
    if n_val >= n:
        raise StageError(f"validation asks for {n_val} documents but the mix has only {n}")
    perm = rng.permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
