"""The filter list at work: the filters built once per process, and one
batch of documents passed through them in order."""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter

from .base import DocumentFilter
from .batch_words import BatchWords, split_batch
from .datatrove_rules import DatatroveRulesFilter
from .registry import load_filter
from .specs import FilterSpec

_CHAINS: dict[str, list[DocumentFilter[Any]]] = {}


def filter_chain(specs_json: str) -> list[DocumentFilter[Any]]:
    """The filters of a JSON list of specs, built once per process (forked
    workers inherit the ones the stage built before the fork)."""
    if specs_json not in _CHAINS:
        specs = TypeAdapter(list[FilterSpec]).validate_python(json.loads(specs_json))
        _CHAINS[specs_json] = [load_filter(s.type)(s) for s in specs]
    return _CHAINS[specs_json]


def filter_batch(table: Any, specs_json: str, text_column: str, edits: bool) -> Any:
    """For each document of the batch, the index of the filter that dropped
    it (``_drop``, -1: kept) and why (``_reason``); plus the edited text when
    a filter edits (``edits``)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    texts = table.column(text_column).combine_chunks().fill_null("")
    if pa.types.is_large_string(texts.type):
        texts = texts.cast(pa.string())
    n = len(texts)
    drop = np.full(n, -1, dtype=np.int16)
    reason = np.full(n, None, dtype=object)
    alive = np.arange(n)
    cur = texts
    out_text = texts.to_pylist() if edits else None
    words: BatchWords | None = None  # the live documents' words, shared by the filters that split alike
    for k, document_filter in enumerate(filter_chain(specs_json)):
        if len(alive) == 0:
            break
        if isinstance(document_filter, DatatroveRulesFilter) and document_filter.shares_words:
            words = split_batch(cur) if words is None else words
            decision = document_filter.decide_with_words(cur, words)
        else:
            decision = document_filter.decide(cur)
        keep = np.asarray(decision.keep, dtype=bool)
        if decision.texts is not None:
            cur, words = decision.texts, None
            if out_text is not None:
                for j, t in zip(alive[keep], pc.filter(cur, pa.array(keep)).to_pylist(), strict=True):
                    out_text[j] = t
        dead = ~keep
        if dead.any():
            drop[alive[dead]] = k
            why = decision.reasons if decision.reasons is not None else np.full(len(keep), "", dtype=object)
            reason[alive[dead]] = [r if r else "" for r in np.asarray(why, dtype=object)[dead]]
            alive = alive[keep]
            cur = pc.filter(cur, pa.array(keep))
            words = words.take(keep) if words is not None else None
    out = {"_drop": pa.array(drop, pa.int16()), "_reason": pa.array(reason.tolist(), pa.string())}
    if edits:
        out[text_column] = pa.array(out_text, pa.string())
    return pa.table(out)
