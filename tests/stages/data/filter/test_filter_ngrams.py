"""The batch n-gram counts of the Gopher repetition rules equal datatrove's
own per-document functions, value for value."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from datatrove.pipeline.filters.gopher_repetition_filter import find_all_duplicate, find_top_duplicate, get_n_grams

from recipe_runner_stages.data.filter import ngrams
from recipe_runner_stages.data.filter.batch_words import split_batch
from recipe_runner_stages.data.filter.datatrove_rules import word_tokenizer


@pytest.fixture(scope="module")
def texts(real_texts, crafted_texts, fuzz_texts) -> list[str]:
    return real_texts[::4] + crafted_texts + fuzz_texts


@pytest.fixture(scope="module")
def split(texts) -> list[list[str]]:
    splitter = word_tokenizer("simple")
    return [splitter.word_tokenize(t) for t in texts]


def test_the_most_frequent_n_gram_is_datatroves(texts, split):
    sizes = [1, 2, 3, 4, 6]
    tops = ngrams.top_ngram_chars(split_batch(pa.array(texts, pa.string())), sizes)
    for n in sizes:
        docs, chars = tops[n]
        expected = {i: find_top_duplicate(get_n_grams(w, n)) for i, w in enumerate(split) if len(w) >= n}
        assert dict(zip(docs.tolist(), chars.tolist(), strict=True)) == expected, n


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 10])
def test_the_characters_of_duplicated_n_grams_are_datatroves(texts, split, n):
    words = split_batch(pa.array(texts, pa.string()))
    docs = np.arange(len(texts))
    got = ngrams.duplicated_ngram_chars(words, n, docs)
    assert got.tolist() == [find_all_duplicate(w, n) for w in split]
    some = docs[::3]
    assert ngrams.duplicated_ngram_chars(words, n, some).tolist() == got[some].tolist()


def test_a_hash_colliding_everywhere_changes_nothing(texts, split, monkeypatch):
    """The hash only says which n-grams may repeat: equal strings hash alike, so
    a collision can only make the exact scan look at more positions."""
    monkeypatch.setattr(ngrams, "_concat_hashes", lambda words, starts, n: np.zeros(len(starts), np.uint64))
    words = split_batch(pa.array(texts[-300:], pa.string()))
    got = ngrams.duplicated_ngram_chars(words, 5, np.arange(300))
    assert got.tolist() == [find_all_duplicate(w, 5) for w in split[-300:]]


def test_n_grams_equal_only_once_joined_count_as_duplicates():
    """datatrove joins the words of a duplicated n-gram with no separator."""
    text = "ab c d e f q a bc d e f"
    words = split_batch(pa.array([text], pa.string()))
    assert find_all_duplicate(text.split(" "), 5) == 6
    assert ngrams.duplicated_ngram_chars(words, 5, np.arange(1)).tolist() == [6]
