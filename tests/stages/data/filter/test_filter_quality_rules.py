"""The Gopher quality filter decides on a whole batch as datatrove's own
filter decides document by document: the same documents kept, the same
reason for each one dropped."""

from __future__ import annotations

from collections import Counter

import pytest

# datatrove's mean word length of a text whose words are all symbols
pytestmark = [
    pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

OPTIONS = {
    "paper": {"type": "gopher_quality"},
    "tight": {
        "type": "gopher_quality",
        "min_doc_words": 5,
        "max_doc_words": 300,
        "min_avg_word_length": 2.5,
        "max_avg_word_length": 6,
        "max_symbol_word_ratio": 0.02,
        "max_bullet_lines_ratio": 0.2,
        "max_ellipsis_lines_ratio": 0.1,
        "max_non_alpha_words_ratio": 0.95,
        "min_stop_words": 4,
        "stop_words": ["a", "b", "of", "日本", "the", "def"],
    },
    "no word count": {"type": "gopher_quality", "min_doc_words": 0, "max_doc_words": None},
    "no bounds but stop words": {
        "type": "gopher_quality",
        "min_doc_words": None,
        "max_doc_words": None,
        "min_avg_word_length": None,
        "max_avg_word_length": None,
        "max_symbol_word_ratio": None,
        "max_bullet_lines_ratio": None,
        "max_ellipsis_lines_ratio": 0.05,
        "max_non_alpha_words_ratio": None,
    },
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_real_text_gets_datatroves_verdicts(real_texts, datatrove_reasons, name, batch_reasons):
    expected = datatrove_reasons(OPTIONS[name], real_texts)
    assert batch_reasons(OPTIONS[name], real_texts, 1000) == expected
    assert len(set(expected)) > 2


@pytest.mark.parametrize("name", list(OPTIONS))
def test_crafted_and_random_text_gets_datatroves_verdicts(
    crafted_texts, fuzz_texts, datatrove_reasons, name, batch_reasons
):
    texts = crafted_texts + fuzz_texts
    assert batch_reasons(OPTIONS[name], texts, 97) == datatrove_reasons(OPTIONS[name], texts)


def test_every_rule_drops_some_document(real_texts, crafted_texts, fuzz_texts, batch_reasons):
    """What the tests above compare covers every rule, and the texts without words."""
    texts = real_texts + crafted_texts + fuzz_texts
    reasons = Counter()
    for options in OPTIONS.values():
        reasons.update(batch_reasons(options, texts, 1000))
    rules = ["empty", "no_words", "gopher_short_doc", "gopher_long_doc", "gopher_below_avg_threshold"]
    rules += ["gopher_above_avg_threshold", "gopher_too_many_hashes", "gopher_too_many_ellipsis"]
    rules += ["gopher_too_many_bullets", "gopher_too_many_end_ellipsis", "gopher_below_alpha_threshold"]
    rules += ["gopher_enough_stop_words"]
    assert not [r for r in rules if reasons[r] == 0], reasons


def test_at_the_thresholds(crafted_texts, datatrove_reasons, batch_reasons):
    """The crafted texts at the paper's bounds (50 words, mean length 3 and 10,
    a '#' per 10 words, 9 bullet lines of 10) decide as datatrove decides."""
    options = OPTIONS["paper"]
    assert batch_reasons(options, crafted_texts, 5) == datatrove_reasons(options, crafted_texts)
