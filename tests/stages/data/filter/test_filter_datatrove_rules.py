"""The filters backed by datatrove's rule sets: the published thresholds,
boundaries, and C4 editing the text it keeps."""

from __future__ import annotations

import re

from recipe_runner_stages.data.filter.stage import FilterParams


def test_c4_keeps_only_the_lines_that_pass(tmp_path, prose, run_filter):
    doc = prose + "\nPlease enable JavaScript in your browser to view this page.\nno punctuation here"
    kept, _ = run_filter(tmp_path, [doc], [{"type": "c4"}])
    assert len(kept) == 1
    assert "JavaScript" not in kept[0] and "no punctuation here" not in kept[0]
    assert kept[0].startswith(prose.split("\n")[0][:50])


def test_gopher_defaults_are_the_published_thresholds():
    """Rae et al. 2021 (Gopher), appendix A / table A1; C4 (Raffel et al. 2020)."""
    p = FilterParams.model_validate(
        {"filters": [{"type": "gopher_quality"}, {"type": "gopher_repetition"}, {"type": "c4"}, {"type": "fineweb"}]}
    )
    q, r, c4, fw = p.filters
    assert (q.min_doc_words, q.max_doc_words) == (50, 100_000)
    assert (q.min_avg_word_length, q.max_avg_word_length) == (3, 10)
    assert q.max_symbol_word_ratio == 0.1
    assert (q.max_bullet_lines_ratio, q.max_ellipsis_lines_ratio) == (0.9, 0.3)
    assert q.max_non_alpha_words_ratio == 0.8 and q.min_stop_words == 2
    assert (r.dup_line_frac, r.dup_para_frac, r.dup_line_char_frac, r.dup_para_char_frac) == (0.3, 0.3, 0.2, 0.2)
    assert [tuple(x) for x in r.top_n_grams] == [(2, 0.2), (3, 0.18), (4, 0.16)]
    assert [tuple(x) for x in r.dup_n_grams] == [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)]
    assert (c4.min_num_sentences, c4.min_words_per_line, c4.max_word_length) == (5, 3, 1000)
    assert (fw.line_punct_thr, fw.short_line_thr, fw.char_duplicates_ratio, fw.new_line_ratio) == (
        0.12,
        0.67,
        0.01,
        0.3,
    )


def test_gopher_word_count_boundary(tmp_path, prose, run_filter):
    """Exactly at the paper's 50-word minimum passes, one word less fails."""
    words = re.findall(r"[A-Za-z]+", prose)
    fifty = " ".join(words[:50]) + "."
    forty_nine = " ".join(words[:49]) + "."
    kept, _ = run_filter(tmp_path, [fifty, forty_nine], [{"type": "gopher_quality"}])
    assert kept == [fifty]
