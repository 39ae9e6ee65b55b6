"""datatrove's ``GopherQualityFilter.filter`` for a whole batch at once: the
same rules in the same order, so the same verdict and the same reason for
every document with at least one word (tested against datatrove's own
filter); the caller asks datatrove about the others (its rules divide by the
number of words)."""

from __future__ import annotations

from functools import cache
from typing import Any

from .arrow_text import PY_WHITESPACE, Verdicts, counts_per_document
from .batch_words import BatchWords, concatenated

#: ``str.splitlines()``'s line boundaries
LINE_BREAKS = r"\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x{85}\x{2028}\x{2029}]"


def quality_reasons(texts: Any, words: BatchWords, options: Any) -> Any:
    """Why each text is dropped by the Gopher quality rules ('' when kept);
    ``options``: the :class:`.gopher_quality.GopherQualityOptions`."""
    import numpy as np

    n_words = words.per_doc
    verdicts = Verdicts(len(n_words))
    symbol, alpha = _word_flags(words.vocab)
    kept = ~symbol[words.ids]
    n_kept = counts_per_document(kept, n_words)
    if options.min_doc_words:
        verdicts.drop(n_kept < options.min_doc_words, "gopher_short_doc")
    if options.max_doc_words:
        verdicts.drop(n_kept > options.max_doc_words, "gopher_long_doc")
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_length = counts_per_document(np.where(kept, words.lengths, 0), n_words) / n_kept
        if options.min_avg_word_length:
            verdicts.drop(mean_length < options.min_avg_word_length, "gopher_below_avg_threshold")
        if options.max_avg_word_length:
            verdicts.drop(mean_length > options.max_avg_word_length, "gopher_above_avg_threshold")
        if options.max_symbol_word_ratio:
            hashes = _count(texts, "#")
            verdicts.drop(hashes / n_words > options.max_symbol_word_ratio, "gopher_too_many_hashes")
            ellipses = _count(texts, "...") + _count(texts, "…")
            verdicts.drop(ellipses / n_words > options.max_symbol_word_ratio, "gopher_too_many_ellipsis")
        _line_rules(verdicts, texts, options)
        if options.max_non_alpha_words_ratio:
            with_alpha = counts_per_document(alpha[words.ids], n_words)
            verdicts.drop(with_alpha / n_words < options.max_non_alpha_words_ratio, "gopher_below_alpha_threshold")
    if options.min_stop_words:
        from datatrove.pipeline.filters.gopher_quality_filter import STOP_WORDS

        stops = STOP_WORDS if options.stop_words is None else options.stop_words
        verdicts.drop(_distinct_present(words, stops) < options.min_stop_words, "gopher_enough_stop_words")
    return verdicts.reasons


def _count(texts: Any, pattern: str) -> Any:
    """Non-overlapping occurrences of ``pattern`` per text (``str.count``)."""
    import numpy as np
    import pyarrow.compute as pc

    return pc.count_substring(texts, pattern).to_numpy(zero_copy_only=False).astype(np.int64)


def _line_rules(verdicts: Verdicts, texts: Any, options: Any) -> None:
    """Lines (``str.splitlines()``) starting with a bullet, ending with an ellipsis."""
    import numpy as np
    import pyarrow.compute as pc

    if not (options.max_bullet_lines_ratio or options.max_ellipsis_lines_ratio):
        return
    parts = pc.split_pattern_regex(texts, LINE_BREAKS)
    n_parts = pc.list_value_length(parts).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(parts)
    # a text ending with a line break splits into an empty last part, which splitlines() leaves out
    last = np.cumsum(n_parts) - 1
    n_lines = n_parts - (pc.binary_length(flat).to_numpy(zero_copy_only=False)[last] == 0)
    if options.max_bullet_lines_ratio:
        left = pc.utf8_ltrim(flat, characters=PY_WHITESPACE)
        bullet = pc.or_(pc.starts_with(left, "•"), pc.starts_with(left, "-"))
        bullets = counts_per_document(bullet.to_numpy(zero_copy_only=False), n_parts)
        verdicts.drop(bullets / n_lines > options.max_bullet_lines_ratio, "gopher_too_many_bullets")
    if options.max_ellipsis_lines_ratio:
        right = pc.utf8_rtrim(flat, characters=PY_WHITESPACE)
        ellipsis = pc.or_(pc.ends_with(right, "..."), pc.ends_with(right, "…"))
        ellipses = counts_per_document(ellipsis.to_numpy(zero_copy_only=False), n_parts)
        verdicts.drop(ellipses / n_lines > options.max_ellipsis_lines_ratio, "gopher_too_many_end_ellipsis")


def _distinct_present(words: BatchWords, stop_words: list[str]) -> Any:
    """Per document: how many distinct stop words are among its words."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    where = pc.index_in(pa.array(sorted(set(stop_words)), pa.string()), value_set=words.vocab)
    stop_ids = np.asarray([i for i in where.to_pylist() if i is not None], dtype=np.int64)
    rank = np.full(len(words.vocab), -1, dtype=np.int64)
    rank[stop_ids] = np.arange(len(stop_ids))
    word_rank = rank[words.ids]
    hit = word_rank >= 0
    pairs = np.unique(words.doc_of_word[hit] * (len(stop_ids) + 1) + word_rank[hit])
    return np.bincount(pairs // (len(stop_ids) + 1), minlength=len(words.doc_starts) - 1)


def _word_flags(vocab: Any) -> tuple[Any, Any]:
    """Per word of ``vocab``: only punctuation (``PUNCTUATION_SET``)? any alphabetic character?"""
    import numpy as np
    import pyarrow.compute as pc

    lengths = pc.utf8_length(vocab).to_numpy(zero_copy_only=False).astype(np.int64)
    if len(lengths) == 0:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)
    points = np.frombuffer(concatenated(vocab).encode("utf-32-le"), dtype=np.uint32)
    punct, alpha = _codepoint_flags(points)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    symbol = np.add.reduceat((~punct).astype(np.int64), starts) == 0
    return symbol, np.add.reduceat(alpha.astype(np.int64), starts) > 0


def _codepoint_flags(points: Any) -> tuple[Any, Any]:
    """Per code point: in datatrove's ``PUNCTUATION_SET``? ``str.isalpha()``?"""
    import numpy as np

    punct_ascii, alpha_ascii = _ascii_flags()
    low = np.minimum(points, 127)
    punct, alpha = punct_ascii[low], alpha_ascii[low]
    high = points > 127
    if high.any():
        from datatrove.utils.text import PUNCTUATION_SET

        distinct, where = np.unique(points[high], return_inverse=True)
        chars = [chr(c) for c in distinct.tolist()]
        punct[high] = np.array([c in PUNCTUATION_SET for c in chars])[where]
        alpha[high] = np.array([c.isalpha() for c in chars])[where]
    return punct, alpha


@cache
def _ascii_flags() -> tuple[Any, Any]:
    import numpy as np
    from datatrove.utils.text import PUNCTUATION_SET

    chars = [chr(c) for c in range(128)]
    return np.array([c in PUNCTUATION_SET for c in chars]), np.array([c.isalpha() for c in chars])
