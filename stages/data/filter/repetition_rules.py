"""datatrove's ``GopherRepetitionFilter.filter`` for a whole batch at once:
the same rules in the same order, so the same verdict and the same reason
for every document (tested against datatrove's own filter)."""

from __future__ import annotations

from typing import Any

from .arrow_text import PY_WHITESPACE, Verdicts, counts_per_document
from .batch_words import BatchWords
from .ngrams import dense_codes, duplicated_ngram_chars, first_occurrences, top_ngram_chars


def repetition_reasons(texts: Any, words: BatchWords, options: Any) -> Any:
    """Why each text is dropped by the Gopher repetition rules ('' when kept);
    ``options``: the :class:`.gopher_repetition.GopherRepetitionOptions`."""
    import numpy as np
    import pyarrow.compute as pc

    total = pc.utf8_length(texts).to_numpy(zero_copy_only=False).astype(np.int64)
    verdicts = Verdicts(len(total))
    verdicts.drop(total == 0, "empty")
    paragraphs = pc.split_pattern_regex(pc.utf8_trim(texts, characters=PY_WHITESPACE), r"\n{2,}")
    lines = pc.split_pattern_regex(texts, r"\n+")
    for parts, (count_frac, char_frac), name in (
        (paragraphs, (options.dup_para_frac, options.dup_para_char_frac), "para"),
        (lines, (options.dup_line_frac, options.dup_line_char_frac), "line"),
    ):
        n_parts = pc.list_value_length(parts).to_numpy(zero_copy_only=False).astype(np.int64)
        dup_count, dup_chars = _duplicates(pc.list_flatten(parts), n_parts)
        with np.errstate(divide="ignore", invalid="ignore"):
            if count_frac:
                verdicts.drop(dup_count / n_parts > count_frac, f"dup_{name}_frac")
            if char_frac:
                verdicts.drop(dup_chars / total > char_frac, f"dup_{name}_char_frac")
    _ngram_rules(verdicts, words, total, options.top_n_grams, options.dup_n_grams)
    return verdicts.reasons


def _duplicates(flat: Any, n_parts: Any) -> tuple[Any, Any]:
    """Per document: how many of its parts (lines, paragraphs) repeat an
    earlier part of the same document, and their characters (``find_duplicates``)."""
    import numpy as np
    import pyarrow.compute as pc

    codes = pc.dictionary_encode(flat).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    doc = np.repeat(np.arange(len(n_parts), dtype=np.int64), n_parts)
    repeat = ~first_occurrences(dense_codes(doc * (len(flat) + 1) + codes))
    part_chars = pc.utf8_length(flat).to_numpy(zero_copy_only=False).astype(np.int64)
    return counts_per_document(repeat, n_parts), counts_per_document(np.where(repeat, part_chars, 0), n_parts)


def _ngram_rules(verdicts: Verdicts, words: BatchWords, total: Any, top: Any, dup: Any) -> None:
    """The top n-gram rules, then the duplicated n-gram rules, on the documents still kept."""
    import numpy as np

    alive = np.flatnonzero(verdicts.alive)
    if len(alive) == 0:
        return
    live = words if len(alive) == len(verdicts.alive) else words.take(verdicts.alive)
    live_total = total[alive]
    tops = top_ngram_chars(live, sorted({int(n) for n, _ in top}))
    for n, frac in top:
        docs, chars = tops[int(n)]
        verdicts.drop(chars / live_total[docs] > frac, f"top_{n}_gram", alive[docs])
    for n, frac in dup:
        still = np.flatnonzero(verdicts.alive[alive])
        if len(still) == 0:
            return
        chars = duplicated_ngram_chars(live, int(n), still)
        verdicts.drop(chars / live_total[still] > frac, f"duplicated_{n}_n_grams", alive[still])
