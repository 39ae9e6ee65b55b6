"""The ``simple`` word splitter run on a whole batch: the same words as the
splitter datatrove's rules get, document by document."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from recipe_runner_stages.data.filter.batch_words import concatenated, split_batch
from recipe_runner_stages.data.filter.datatrove_rules import word_tokenizer


def words_of(words, doc: int) -> list[str]:
    vocab = words.vocab.to_pylist()
    return [vocab[k] for k in words.ids[words.doc_starts[doc] : words.doc_starts[doc + 1]]]


def test_the_words_are_the_simple_splitters(real_texts, crafted_texts, fuzz_texts):
    texts = real_texts[::5] + crafted_texts + fuzz_texts
    splitter = word_tokenizer("simple")
    words = split_batch(pa.array(texts, pa.string()))
    assert len(words.doc_starts) == len(texts) + 1
    for i, text in enumerate(texts):
        expected = splitter.word_tokenize(text)
        assert words_of(words, i) == expected, repr(text[:80])
        assert words.lengths[words.doc_starts[i] : words.doc_starts[i + 1]].tolist() == [len(w) for w in expected]


def test_a_slice_of_an_arrow_array_splits_as_its_texts():
    texts = ["  lead and trail  ", "", "«quoted» words", "\u3000x\x1cy\x85", "...", "last one"]
    words = split_batch(pa.array(texts, pa.string()).slice(2, 3))
    assert [words_of(words, i) for i in range(3)] == [["quoted", "words"], ["x", "y"], ["..."]]


def test_take_keeps_the_chosen_documents_words(crafted_texts):
    words = split_batch(pa.array(crafted_texts, pa.string()))
    keep = np.arange(len(crafted_texts)) % 3 != 1
    kept = words.take(keep)
    chosen = np.flatnonzero(keep)
    assert [words_of(kept, i) for i in range(len(chosen))] == [words_of(words, int(d)) for d in chosen]
    assert kept.doc_string(1) == "".join(words_of(words, int(chosen[1])))


def test_concatenated_reads_the_array_buffer_from_its_offset():
    array = pa.array(["ab", "ç", "dé", "f"], pa.string())
    assert concatenated(array) == "abçdéf"
    assert concatenated(array.slice(1, 2)) == "çdé"
    assert concatenated(array.slice(4)) == ""
