"""A filter list passes the words of a batch from one Gopher filter to the
next (split once, narrowed to the documents still kept, split again after a
filter edits the text): the same verdicts as each filter on its own, with
datatrove's per-document code."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from recipe_runner_stages.data.filter.chain import filter_batch
from recipe_runner_stages.data.filter.datatrove_rules import DatatroveRulesFilter

LISTS = {
    "the Gopher pair": [{"type": "gopher_repetition"}, {"type": "gopher_quality"}],
    "others between": [
        {"type": "gopher_quality", "min_doc_words": 10},
        {"type": "length", "min_words": 30},
        {"type": "c4"},
        {"type": "gopher_repetition", "top_n_grams": [[2, 0.1]]},
        {"type": "gopher_quality", "min_stop_words": 3},
    ],
}


@pytest.mark.parametrize("name", list(LISTS))
def test_shared_words_give_each_filters_own_verdicts(real_texts, crafted_texts, fuzz_texts, monkeypatch, name):
    specs = json.dumps(LISTS[name])
    edits = any(f["type"] == "c4" for f in LISTS[name])
    table = pa.table({"text": pa.array(real_texts[::3] + crafted_texts + fuzz_texts[::3], pa.string())})

    def run() -> pa.Table:
        return pa.concat_tables(
            filter_batch(table.slice(a, 500), specs, "text", edits) for a in range(0, len(table), 500)
        )

    shared = run()
    monkeypatch.setattr(DatatroveRulesFilter, "shares_words", property(lambda self: False))
    alone = run()
    assert shared.equals(alone)
    assert len(set(shared.column("_drop").to_pylist())) == len(LISTS[name]) + 1  # every filter dropped some
