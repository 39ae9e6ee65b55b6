"""The order of a data stage's metrics: the informative numbers first, so
that the run summary (which shows the first few) shows them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def order_metrics(m: dict[str, Any], first: Sequence[str]) -> None:
    """Reorder ``m`` in place: keys (or ``prefix.`` groups) in ``first`` lead,
    in that order; the others follow in their order."""
    ordered: dict[str, Any] = {}
    for f in first:
        if f.endswith("."):
            ordered.update({k: v for k, v in m.items() if k.startswith(f)})
        elif f in m:
            ordered[f] = m[f]
    ordered.update(m)
    m.clear()
    m.update(ordered)
