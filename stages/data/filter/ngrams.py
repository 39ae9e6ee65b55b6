"""The n-gram counts of Gopher's repetition rules, for a whole batch at once,
equal to datatrove's per-document loops:

- the most frequent n-gram (``find_top_duplicate`` over ``get_n_grams``: the
  words joined by a space, ties going to the n-gram seen first) from exact
  integer keys of (document, n words);
- the characters in duplicated n-grams (``find_all_duplicate``: the words
  joined with no separator, scanned greedily, skipping n words after each
  duplicate) from a hash of the joined characters.  Equal strings have equal
  hashes, so a document none of whose hashes repeats has no duplicate (0
  characters, the common case); the others are scanned exactly as datatrove
  does, with the strings themselves, over the only positions that can repeat.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from .batch_words import BatchWords, concatenated

#: the polynomial hash's base (odd: invertible modulo 2**64) and a document salt
_BASE = 0x9E3779B97F4A7C15
_DOC_SALT = 0xC2B2AE3D27D4EB4F


def dense_codes(keys: Any) -> Any:
    """Integer codes of ``keys`` (a numpy integer array): 0, 1, ... in order of first occurrence."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.dictionary_encode(pa.array(keys)).indices.to_numpy(zero_copy_only=False).astype(np.int64)


def first_occurrences(codes: Any) -> Any:
    """Which entries of ``codes`` (from :func:`dense_codes`) are a code's first occurrence."""
    import numpy as np

    if len(codes) == 0:
        return np.zeros(0, dtype=bool)
    seen = np.maximum.accumulate(np.concatenate(([-1], codes[:-1])))
    return codes > seen


def ngram_starts(words: BatchWords, n: int) -> Any:
    """The positions of the words that start an n-gram inside their document."""
    import numpy as np

    doc_end = np.repeat(words.doc_starts[1:], words.per_doc)
    return np.flatnonzero(np.arange(len(words.ids)) + n <= doc_end)


def top_ngram_chars(words: BatchWords, sizes: list[int]) -> dict[int, tuple[Any, Any]]:
    """Per n of ``sizes``: (documents with an n-gram, characters of their most
    frequent n-gram times its count: ``find_top_duplicate``)."""
    import numpy as np

    doc = words.doc_of_word
    vocab = max(len(words.vocab), 1)
    starts = np.arange(len(words.ids))
    keys = doc * vocab + words.ids  # (document, n words) as one integer, exactly
    bound = (len(words.doc_starts) - 1) * vocab  # above every key
    out: dict[int, tuple[Any, Any]] = {}
    for n in range(1, max(sizes, default=0) + 1):
        if n > 1:
            starts = ngram_starts(words, n)
            if bound * vocab >= 2**62:
                keys[starts], bound = dense_codes(keys[starts]), len(starts)
            keys = _full(keys[starts] * vocab + words.ids[starts + n - 1], starts, len(words.ids))
            bound *= vocab
        if n in sizes:
            codes = dense_codes(keys[starts])
            out[n] = _top_per_doc(words, doc, starts, codes, n)
            keys[starts], bound = codes, len(starts)
    return out


def _full(values: Any, where: Any, size: int) -> Any:
    """An array of ``size`` zeros with ``values`` at ``where``."""
    import numpy as np

    out = np.zeros(size, dtype=np.int64)
    out[where] = values
    return out


def _top_per_doc(words: BatchWords, doc: Any, starts: Any, codes: Any, n: int) -> tuple[Any, Any]:
    """(documents, characters of their most frequent n-gram times its count),
    given the n-grams' ``codes`` at ``starts``."""
    import numpy as np

    if len(codes) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    counts = np.bincount(codes)
    first = starts[first_occurrences(codes)]  # the first position of code 0, 1, ...
    key_doc = doc[first]  # non-decreasing: a document's codes follow the previous one's
    seg = np.flatnonzero(np.concatenate(([True], key_doc[1:] != key_doc[:-1])))
    top = np.maximum.reduceat(counts, seg)
    seg_len = np.diff(np.concatenate((seg, [len(counts)])))
    best = np.flatnonzero(counts == np.repeat(top, seg_len))
    best = best[np.concatenate(([True], key_doc[best[1:]] != key_doc[best[:-1]]))]  # first per document
    char_starts = words.char_starts
    pos = first[best]
    chars = char_starts[pos + n] - char_starts[pos] + (n - 1)
    return key_doc[best], chars * counts[best]


def duplicated_ngram_chars(words: BatchWords, n: int, docs: Any) -> Any:
    """Per document of ``docs`` (indices into the batch): the characters of
    its duplicated n-grams, ``find_all_duplicate``."""
    import numpy as np

    starts = ngram_starts(words, n)
    doc = words.doc_of_word[starts]
    in_docs = np.zeros(len(words.doc_starts) - 1, dtype=bool)
    in_docs[docs] = True
    starts, doc = starts[in_docs[doc]], doc[in_docs[doc]]
    keys = _concat_hashes(words, starts, n) ^ (doc.astype(np.uint64) * np.uint64(_DOC_SALT))
    maybe = _repeated(keys)
    repeated = np.zeros(len(in_docs), dtype=np.int64)
    _scan_documents(words, n, starts[maybe], doc[maybe], repeated)
    return repeated[docs]


def _scan_documents(words: BatchWords, n: int, candidates: Any, candidate_doc: Any, out: Any) -> None:
    """datatrove's greedy count, into ``out``, for the documents with
    ``candidates`` (positions whose n-gram may repeat, in order)."""
    import numpy as np

    if len(candidates) == 0:
        return
    gram_starts = words.char_starts[candidates] - words.char_starts[words.doc_starts[candidate_doc]]
    gram_ends = gram_starts + (words.char_starts[candidates + n] - words.char_starts[candidates])
    cut = np.flatnonzero(np.diff(candidate_doc)) + 1
    group_doc = candidate_doc[np.concatenate(([0], cut))].tolist()
    groups = zip(np.split(candidates, cut), np.split(gram_starts, cut), np.split(gram_ends, cut), strict=True)
    for d, (positions, a, b) in zip(group_doc, groups, strict=True):
        out[d] = _greedy(words.doc_string(d), positions.tolist(), a.tolist(), b.tolist(), n)


def _repeated(keys: Any) -> Any:
    """Which of ``keys`` (well mixed in their top bits) occur more than once:
    those whose top bits do (a cheap first pass), among them the equal ones."""
    import numpy as np

    if len(keys) == 0:
        return np.zeros(0, dtype=bool)
    bits = min(int(len(keys)).bit_length() + 3, 30)
    bucket = (keys >> np.uint64(64 - bits)).astype(np.int64)
    maybe = np.bincount(bucket, minlength=1 << bits)[bucket] >= 2
    codes = dense_codes(keys[maybe])
    maybe[maybe] = np.bincount(codes)[codes] >= 2
    return maybe


def _greedy(text: str, positions: list[int], starts: list[int], ends: list[int], n: int) -> int:
    """datatrove's scan over the positions whose n-gram may repeat (the others
    never do: their n-gram is unique in the document, so skipping them changes
    nothing); the n-gram at ``positions[i]`` is ``text[starts[i]:ends[i]]``."""
    seen: set[str] = set()
    repeated = resume = 0
    for p, a, b in zip(positions, starts, ends, strict=True):
        if p < resume:
            continue
        gram = text[a:b]
        if gram in seen:
            repeated += b - a
            resume = p + n
        else:
            seen.add(gram)
    return repeated


def _concat_hashes(words: BatchWords, starts: Any, n: int) -> Any:
    """A 64-bit polynomial hash of the characters of the n words at each of
    ``starts``: the same for the same characters, however split into words."""
    import numpy as np

    if "hash_prefix" not in words.derived:
        word_hash, word_power, word_inverse = _vocab_hashes(words.vocab)
        one = np.ones(1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            offset_power = np.concatenate((one, np.cumprod(word_power[words.ids])))  # base ** characters before
            prefix = np.concatenate((one * 0, np.cumsum(word_hash[words.ids] * offset_power[:-1])))
            offset_inverse = np.concatenate((one, np.cumprod(word_inverse[words.ids])))
        words.derived["hash_prefix"] = (prefix, offset_inverse)
    prefix, offset_inverse = words.derived["hash_prefix"]
    with np.errstate(over="ignore"):
        return (prefix[starts + n] - prefix[starts]) * offset_inverse[starts]


def _vocab_hashes(vocab: Any) -> tuple[Any, Any, Any]:
    """Per word of ``vocab``: its hash, base ** its length and the inverse of that."""
    import numpy as np
    import pyarrow.compute as pc

    lengths = pc.utf8_length(vocab).to_numpy(zero_copy_only=False).astype(np.int64)
    points = np.frombuffer(concatenated(vocab).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64) + 1
    powers, inverses = _powers(len(points) + 1)
    starts = np.concatenate(([0], np.cumsum(lengths)))
    with np.errstate(over="ignore"):
        prefix = np.concatenate(([np.uint64(0)], np.cumsum(points * powers[:-1])))
        word_hash = (prefix[starts[1:]] - prefix[starts[:-1]]) * inverses[starts[:-1]]
    return word_hash, powers[lengths], inverses[lengths]


@cache
def _inverse_base() -> int:
    return pow(_BASE, -1, 2**64)


def _powers(size: int) -> tuple[Any, Any]:
    """base ** 0 .. size - 1 and their inverses, modulo 2**64."""
    import numpy as np

    with np.errstate(over="ignore"):
        powers = np.cumprod(np.full(size, _BASE, dtype=np.uint64))
        inverses = np.cumprod(np.full(size, _inverse_base(), dtype=np.uint64))
    one = np.ones(1, dtype=np.uint64)
    return np.concatenate((one, powers[:-1])), np.concatenate((one, inverses[:-1]))
