"""The Gopher repetition filter decides on a whole batch as datatrove's own
filter decides document by document: the same documents kept, the same
reason for each one dropped."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pytest

from recipe_runner_stages.data.filter.registry import load_filter

OPTIONS = {
    "paper": {"type": "gopher_repetition"},
    "other n-grams, some rules off": {
        "type": "gopher_repetition",
        "dup_line_frac": None,
        "dup_para_frac": 0,
        "dup_para_char_frac": None,
        "top_n_grams": [[1, 0.3], [3, 0.05], [2, 0.08]],
        "dup_n_grams": [[2, 0.2], [5, 0.02], [12, 0.01]],
    },
    "zero thresholds": {
        "type": "gopher_repetition",
        "dup_line_char_frac": 0.01,
        "top_n_grams": [],
        "dup_n_grams": [[6, 0.0], [1, 0.0]],
    },
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_real_text_gets_datatroves_verdicts(real_texts, datatrove_reasons, name, batch_reasons):
    expected = datatrove_reasons(OPTIONS[name], real_texts)
    assert batch_reasons(OPTIONS[name], real_texts, 1000) == expected
    assert len(set(expected)) > 3  # the rules do drop documents, for several reasons


@pytest.mark.parametrize("name", list(OPTIONS))
def test_crafted_and_random_text_gets_datatroves_verdicts(
    crafted_texts, fuzz_texts, datatrove_reasons, name, batch_reasons
):
    texts = crafted_texts + fuzz_texts
    assert batch_reasons(OPTIONS[name], texts, 97) == datatrove_reasons(OPTIONS[name], texts)


def test_every_rule_drops_some_document(real_texts, crafted_texts, fuzz_texts, datatrove_reasons, batch_reasons):
    """What the tests above compare covers every rule of the paper's set."""
    reasons = Counter(batch_reasons(OPTIONS["paper"], real_texts + crafted_texts + fuzz_texts, 1000))
    rules = ["empty", "dup_para_frac", "dup_para_char_frac", "dup_line_frac", "dup_line_char_frac"]
    rules += [f"top_{n}_gram" for n in (2, 3, 4)] + [f"duplicated_{n}_n_grams" for n in range(5, 11)]
    assert not [r for r in rules if reasons[r] == 0], reasons


def test_at_a_threshold_is_kept_above_it_is_not(datatrove_reasons, batch_reasons):
    """3 duplicated lines of 10 is the paper's 0.3: kept; 4 of 10 is not."""
    options = {"type": "gopher_repetition", "dup_line_char_frac": None, "top_n_grams": [], "dup_n_grams": []}
    at = "\n".join([f"line number {i}" for i in range(6)] + ["again"] * 4)
    above = "\n".join([f"line number {i}" for i in range(5)] + ["again"] * 5)
    texts = [at, above]
    assert batch_reasons(options, texts, 10) == datatrove_reasons(options, texts) == ["", "dup_line_frac"]


@pytest.mark.parametrize("filter_type", ["gopher_repetition", "gopher_quality"])
def test_nulls_large_strings_and_chunks_decide_as_plain_texts(prose, filter_type):
    cls = load_filter(filter_type)
    document_filter = cls(cls.Options.model_validate({"type": filter_type}))
    texts = [None, prose, "", "x\nx\nx"]
    expected = document_filter.decide_per_document(pa.array(texts, pa.string()))
    for array in (pa.array(texts, pa.large_string()), pa.chunked_array([texts[:2], texts[2:]], pa.string())):
        assert list(document_filter.decide(array).reasons) == list(expected.reasons)
