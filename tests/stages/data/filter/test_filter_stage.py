"""The filter stage: every filter on documents that must pass and must fail,
metrics, columns and splits passed through, clear failures, and finished
shards kept when a filter fails."""

from __future__ import annotations

import re

import pytest

from recipe_runner import DATASET, Artifact, StageError
from recipe_runner.testing import run_stage
from recipe_runner_stages.data.course_reference import paragraph_length_filter
from recipe_runner_stages.data.filter.stage import FilterParams, FilterStage


def test_default_filters_are_the_courses(tmp_path):
    p = FilterParams()
    assert [f.type for f in p.filters] == ["paragraph_length", "paragraph_repetition"]
    pl, pr = p.filters
    assert (pl.min_lines, pl.top_lines, pl.min_line_chars) == (3, 3, 3)
    assert (pr.max_duplicate_paragraph_fraction, pr.max_duplicate_char_fraction) == (0.3, 0.2)


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
        (
            {"type": "gopher_quality"},
            re.sub(r"\b(the|be|to|of|and|that|have|with)\b", "", prose, flags=re.I),
            False,
            "gopher_enough_stop_words",
        ),
        ({"type": "gopher_quality"}, " ".join(["12 34 5 6"] * 30), False, "gopher_below_avg_threshold"),
        ({"type": "gopher_repetition"}, prose, True, ""),
        ({"type": "gopher_repetition"}, "\n".join([words[0] + " " + words[1]] * 10 + [prose]), False, "dup_line_frac"),
        ({"type": "gopher_repetition"}, (prose + "\n\n") * 3, False, "dup_para_frac"),
        ({"type": "c4"}, prose, True, ""),
        ({"type": "c4"}, prose + "\nLorem ipsum dolor sit amet, consectetur.", False, "lorem_ipsum"),
        ({"type": "c4"}, prose + "\nUse the {braces} of this function here.", False, "curly_bracket"),
        ({"type": "c4"}, "Short line. Another one. Third.", False, "too_few_sentences"),
        ({"type": "fineweb"}, prose, True, ""),
        (
            {"type": "fineweb"},
            "\n".join(["menu item"] * 3 + ["home", "about us", "contact"]) + "\n" + prose,
            False,
            "short_line_ratio",
        ),
        ({"type": "fineweb"}, "\n".join(w for w in words[:80]), False, "line_punct_ratio"),
        ({"type": "language"}, prose, True, ""),
        (
            {"type": "language"},
            "Le petit chat dort sur le canapé pendant que la pluie tombe doucement sur "
            "les toits de la ville. Nous irons au marché demain matin.",
            False,
            "fr",
        ),
        (
            {"type": "language", "languages": ["fr", "de"]},
            "Der Hund läuft schnell über die grüne Wiese und bellt die Vögel an, die im Baum sitzen.",
            True,
            "",
        ),
        ({"type": "paragraph_length"}, "one line\nand another", False, "too_few_lines"),
        ({"type": "paragraph_length"}, "ab\nabc\nabcd\nx", False, "short_lines"),
        ({"type": "paragraph_length"}, prose.replace(". ", ".\n"), True, ""),
        ({"type": "paragraph_repetition"}, "a line\n\nanother\n\na line\n\na line", False, "duplicate_paragraphs"),
        (
            {"type": "paragraph_repetition"},
            "long repeated paragraph here\n\nx\n\ny\n\nz\n\nw\n\nlong repeated paragraph here",
            False,
            "duplicate_chars",
        ),
    ]


def test_every_filter_keeps_and_drops_the_right_documents(tmp_path, prose, run_filter):
    cases = _cases(prose)
    by_filter: dict[str, list] = {}
    for spec, text, keep, reason in cases:
        by_filter.setdefault(repr(spec), []).append((spec, text, keep, reason))
    for i, group in enumerate(by_filter.values()):
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


def test_duplicate_filter_names_get_distinct_metrics(tmp_path, shakespeare_paragraphs, run_filter):
    texts = shakespeare_paragraphs[:300]
    kept, m = run_filter(tmp_path, texts, [{"type": "length", "min_chars": 50}, {"type": "length", "max_chars": 200}])
    assert kept == [t for t in texts if 50 <= len(t) <= 200]
    assert m["removed.length"] == sum(len(t) < 50 for t in texts)
    assert m["removed.length-2"] == sum(len(t) > 200 for t in texts if len(t) >= 50)


def test_validation_split_and_other_columns_pass_through(tmp_path, shakespeare_paragraphs, save_texts):
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
    with pytest.raises(StageError, match="no column 'text'.*content"):
        run_stage(FilterStage, {}, inputs={"dataset": Artifact(DATASET, tmp_path / "in")}, workdir=tmp_path / "w")
    r = run_stage(
        FilterStage,
        {"text_column": "content", "filters": [{"type": "length", "min_chars": 1}]},
        inputs={"dataset": Artifact(DATASET, tmp_path / "in")},
        workdir=tmp_path / "w2",
    )
    assert r.metrics["documents_out"] == 1


def test_a_10_mb_single_line_is_filtered_not_a_crash(tmp_path, prose, run_filter):
    big = ("word " * 2_100_000)[: 10 * 2**20]
    prose = prose.replace(". ", ".\n")  # enough lines for the course filter
    kept, m = run_filter(tmp_path, [big, prose], [{"type": "paragraph_length"}, {"type": "length", "max_chars": 10**6}])
    assert kept == [prose]
    assert m["reasons.paragraph_length.too_few_lines"] == 1


def test_a_text_column_that_holds_no_text_is_a_clear_error(tmp_path, save_texts):
    art = save_texts(tmp_path / "in", ["a document"] * 3, n=[1, 2, 3])
    with pytest.raises(StageError, match=r"column 'n' \(split 'train'\) holds int64, not text"):
        run_stage(FilterStage, {"text_column": "n"}, inputs={"dataset": art}, workdir=tmp_path / "w")


def test_filter_failure_keeps_finished_shards(
    tmp_path, filter_plugin, shakespeare_paragraphs, monkeypatch, save_texts, load_split
):
    docs = list(shakespeare_paragraphs[:1000])
    docs[650] = docs[650] + "\nBOOM"  # the plugin fails on this one (in the 7th shard of 100)
    art = save_texts(tmp_path / "in", docs)
    flag = tmp_path / "explode.flag"
    flag.write_text("")
    monkeypatch.setenv("EXPLODE_FLAG", str(flag))
    params = {"filters": [{"type": "paragraph_length"}, {"type": "explode"}], "shard_size": 100, "num_proc": 1}
    with pytest.raises(StageError, match="documents 600..699.*6 finished shard"):
        run_stage(FilterStage, params, inputs={"dataset": art}, workdir=tmp_path / "w")
    flag.unlink()  # "fix" the problem
    r = run_stage(FilterStage, params, inputs={"dataset": art}, workdir=tmp_path / "w")
    assert r.metrics["shards_reused"] == 6 and r.metrics["shards_computed"] == 4
    clean = run_stage(FilterStage, params, inputs={"dataset": art}, workdir=tmp_path / "clean")
    assert list(load_split(r.outputs["dataset"])["text"]) == list(load_split(clean.outputs["dataset"])["text"])
    assert {k: v for k, v in r.metrics.items() if not k.startswith("shards_")} == {
        k: v for k, v in clean.metrics.items() if not k.startswith("shards_")
    }


def test_batches_hold_at_most_batch_size_rows_and_max_bytes_of_text_unless_one_row_is_more():
    import pyarrow as pa

    from recipe_runner_stages.data.filter.stage import _batches

    texts = pa.chunked_array([["a" * 10, None, "b" * 3], ["c" * 30, "d"]], pa.string())
    assert _batches(texts, 1000, 12) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert _batches(texts, 2, 1000) == [(0, 2), (2, 4), (4, 5)]
    assert _batches(pa.chunked_array([], pa.string()), 5, 10) == []
