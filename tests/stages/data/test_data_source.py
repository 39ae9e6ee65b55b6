"""The source stage: local files of every format, code globs, mixing,
seeded splits, cache fingerprints, malformed input and the hub offline."""
from __future__ import annotations

import csv
import gzip
import json
import os
import re
import time

import pytest
from pydantic import ValidationError

from recipe_runner.stage import StageError
from recipe_runner.testing import run_stage
from recipe_runner_stages.data.source import SourceParams, SourceStage

STDLIB = __import__('pathlib').Path(__import__('sysconfig').get_paths()['stdlib'])


def run_source(tmp_path, sources, name="s", **params):
    r = run_stage(SourceStage, {"sources": sources, **params}, workdir=tmp_path / name, seed=7)
    from datasets import load_from_disk

    return load_from_disk(str(r.outputs["dataset"].path)), r.metrics


def test_text_files_whole_and_by_blank_lines(tmp_path, data_dir):
    dd, m = run_source(tmp_path, [
        {"path": str(data_dir / "the-verdict.txt")},
        {"path": str(data_dir / "tinyshakespeare.txt"), "split_by": "blank_lines", "name": "shakespeare"},
    ])
    verdict = (data_dir / "the-verdict.txt").read_text()
    paras = [p.strip("\n") for p in (data_dir / "tinyshakespeare.txt").read_text().split("\n\n") if p.strip()]
    train = dd["train"]
    assert train[0]["text"] == verdict and train[0]["source"] == "the-verdict"
    assert list(train["text"][1:]) == paras
    assert set(train["source"][1:]) == {"shakespeare"}
    assert m["documents.shakespeare"] == len(paras) and m["documents.the-verdict"] == 1


def test_structured_formats_plain_and_gzipped(tmp_path, data_dir):
    import pandas as pd

    alpaca = json.loads((data_dir / "instruction-data.json").read_text())
    hh = [json.loads(l) for l in gzip.open(data_dir / "hh-rlhf-harmless-base-test.jsonl.gz", "rt")]
    with open(data_dir / "TruthfulQA.csv", newline="") as f:
        tqa = [row["Question"] for row in csv.DictReader(f)]
    obqa = [json.loads(l) for l in open(data_dir / "openbookqa.jsonl")]
    pq = tmp_path / "obqa.parquet"
    pd.DataFrame({"stem": [r["question"]["stem"] if isinstance(r.get("question"), dict) else str(r)
                           for r in obqa]}).to_parquet(pq)
    pq_gz = tmp_path / "obqa2.parquet.gz"
    pq_gz.write_bytes(gzip.compress(pq.read_bytes()))
    csv_gz = tmp_path / "tqa.csv.gz"
    csv_gz.write_bytes(gzip.compress((data_dir / "TruthfulQA.csv").read_bytes()))
    txt_gz = tmp_path / "verdict.txt.gz"
    txt_gz.write_bytes(gzip.compress((data_dir / "the-verdict.txt").read_bytes()))
    dd, m = run_source(tmp_path, [
        {"path": str(data_dir / "instruction-data.json"), "text_column": "output", "name": "alpaca"},
        {"path": str(data_dir / "hh-rlhf-harmless-base-test.jsonl.gz"), "text_column": "chosen", "name": "hh"},
        {"path": str(data_dir / "TruthfulQA.csv"), "text_column": "Question", "name": "tqa"},
        {"path": str(csv_gz), "text_column": "Question", "name": "tqa_gz"},
        {"path": str(pq), "text_column": "stem", "name": "obqa"},
        {"path": str(pq_gz), "text_column": "stem", "name": "obqa_gz"},
        {"path": str(txt_gz), "split_by": "lines", "name": "verdict_lines"},
    ])
    t = dd["train"]
    by = {}
    for text, src in zip(t["text"], t["source"]):
        by.setdefault(src, []).append(text)
    assert by["alpaca"] == [r["output"] for r in alpaca if r["output"].strip()]
    assert by["hh"] == [r["chosen"] for r in hh]
    assert by["tqa"] == tqa and by["tqa_gz"] == tqa
    stems = list(pd.read_parquet(pq)["stem"])
    assert by["obqa"] == stems and by["obqa_gz"] == stems
    lines = [l for l in (data_dir / "the-verdict.txt").read_text().splitlines() if l.strip()]
    assert by["verdict_lines"] == [l.strip("\r\n") for l in lines]
    assert m["skipped_empty_documents"] == sum(1 for r in alpaca if not r["output"].strip())


def test_separator_and_regex_splits(tmp_path):
    f = tmp_path / "docs.txt"
    f.write_text("first doc\n<|endoftext|>\nsecond doc\n<|endoftext|>\n\n<|endoftext|>third")
    dd, _ = run_source(tmp_path, [{"path": str(f), "split_by": "separator", "separator": "<|endoftext|>"}])
    assert list(dd["train"]["text"]) == ["first doc", "second doc", "third"]
    dd, _ = run_source(tmp_path, [{"path": str(f), "split_by": "regex", "separator": r"\n?<\|endoftext\|>\n?"}],
                       name="r")
    assert list(dd["train"]["text"]) == ["first doc", "second doc", "third"]
    with pytest.raises(ValidationError, match="regular expression"):
        SourceParams.model_validate({"sources": [{"path": str(f), "split_by": "regex", "separator": "("}]})


def test_code_files_by_glob_one_document_each(tmp_path):
    files = sorted((STDLIB / "json").rglob("*.py"))
    dd, m = run_source(tmp_path, [{"path": str(STDLIB / "json"), "glob": "**/*.py", "name": "code"}])
    assert list(dd["train"]["text"]) == [f.read_text() for f in files if f.read_text().strip()]
    # a glob pattern as the path, with an exclusion
    dd2, _ = run_source(tmp_path, [{"path": str(STDLIB / "json" / "*.py"), "exclude": ["tool.py"]}], name="g")
    assert len(dd2["train"]) == len([f for f in (STDLIB / "json").glob("*.py")
                                     if f.name != "tool.py" and f.read_text().strip()])


def test_mixing_by_counts_weights_and_repetition(tmp_path, data_dir):
    shakes = {"path": str(data_dir / "tinyshakespeare.txt"), "split_by": "blank_lines", "name": "web"}
    code = {"path": str(STDLIB / "json"), "glob": "*.py", "name": "code"}
    n_code = len([f for f in (STDLIB / "json").glob("*.py") if f.read_text().strip()])
    dd, m = run_source(tmp_path, [{**shakes, "count": 600}, {**code, "count": 3 * n_code + 2}], name="c")
    src = list(dd["train"]["source"])
    assert src.count("web") == 600 and src.count("code") == 3 * n_code + 2
    texts = list(dd["train"]["text"])
    code_texts = [t for t, s in zip(texts, src) if s == "code"]
    assert all(code_texts.count(t) in (3, 4) for t in code_texts)  # whole passes plus a sample
    # the same seed gives the same sample, another seed another one
    dd_again, _ = run_source(tmp_path, [{**shakes, "count": 600}, {**code, "count": 3 * n_code + 2}], name="c2")
    assert list(dd_again["train"]["text"]) == texts
    r = run_stage(SourceStage, {"sources": [{**shakes, "count": 600}], "seed": 123}, workdir=tmp_path / "c3")
    from datasets import load_from_disk

    other = list(load_from_disk(str(r.outputs["dataset"].path))["train"]["text"])
    assert other != [t for t, s in zip(texts, src) if s == "web"]
    # weights: proportions of a total
    dd, m = run_source(tmp_path, [{**shakes, "weight": 3}, {**code, "weight": 1}], total=400, name="w")
    assert m["documents.web"] == 300 and m["documents.code"] == 100
    # weights without a total: as many as possible without repeating a source
    dd, m = run_source(tmp_path, [{**shakes, "weight": 1}, {**code, "weight": 1}], name="w2")
    assert m["documents.code"] == n_code and m["documents.web"] == n_code
    with pytest.raises(ValidationError):
        SourceParams.model_validate({"sources": [{**shakes, "weight": 1}, code]})


def test_seeded_validation_split(tmp_path, data_dir):
    src = [{"path": str(data_dir / "tinyshakespeare.txt"), "split_by": "blank_lines"}]
    dd, m = run_source(tmp_path, src, validation=0.1, name="a")
    from collections import Counter

    paras = [p.strip("\n") for p in (data_dir / "tinyshakespeare.txt").read_text().split("\n\n") if p.strip()]
    assert len(dd["validation"]) == round(len(paras) * 0.1)
    assert Counter(dd["train"]["text"]) + Counter(dd["validation"]["text"]) == Counter(paras)
    dd2, _ = run_source(tmp_path, src, validation=0.1, name="b")
    assert list(dd2["validation"]["text"]) == list(dd["validation"]["text"])
    dd3, _ = run_source(tmp_path, src, validation=25, name="c")
    assert len(dd3["validation"]) == 25
    with pytest.raises(ValidationError):
        SourceParams.model_validate({"sources": src, "validation": 1.5})


def test_fingerprint_covers_file_stats_and_is_cheap(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.txt").write_text(f"document {i}\n")
    p = SourceParams.model_validate({"sources": [{"path": str(d), "glob": "*.txt"}]})
    fp1 = SourceStage.fingerprint_extra(p)
    assert fp1 == SourceStage.fingerprint_extra(p)
    assert [e[0] for e in fp1[0]] == [str(d / f"{i}.txt") for i in range(3)]
    st = os.stat(d / "1.txt")
    os.utime(d / "1.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert SourceStage.fingerprint_extra(p) != fp1
    (d / "3.txt").write_text("new")
    assert len(SourceStage.fingerprint_extra(p)[0]) == 4
    big = SourceParams.model_validate({"sources": [{"path": str(STDLIB), "glob": "**/*.py"}]})
    t = time.perf_counter()
    SourceStage.fingerprint_extra(big)
    assert time.perf_counter() - t < 5  # stat calls over the whole standard library


def test_malformed_files_are_counted_skips_or_clear_errors(tmp_path, data_dir):
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "good.txt").write_text("a good document\nwith two lines")
    (d / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (d / "empty.txt").write_bytes(b"")
    (d / "blank.txt").write_text("  \n\n ")
    (d / "broken.txt.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    dd, m = run_source(tmp_path, [{"path": str(d), "glob": "*"}])
    assert list(dd["train"]["text"]) == ["a good document\nwith two lines"]
    assert m["skipped_undecodable_files"] == 2 and m["skipped_empty_files"] == 2
    with pytest.raises(StageError, match="latin1.txt is not valid utf-8"):
        run_source(tmp_path, [{"path": str(d / "latin1.txt"), "on_decode_error": "error"}], name="e")
    dd, _ = run_source(tmp_path, [{"path": str(d / "latin1.txt"), "on_decode_error": "replace"}], name="r")
    assert dd["train"][0]["text"] == "caf\ufffd cr\ufffdme"
    dd, _ = run_source(tmp_path, [{"path": str(d / "latin1.txt"), "encoding": "latin-1"}], name="l")
    assert dd["train"][0]["text"] == "café crème"
    with pytest.raises(StageError, match="no column 'text'.*instruction"):
        run_source(tmp_path, [{"path": str(data_dir / "instruction-data.json")}], name="c")
    with pytest.raises(StageError, match="does not exist"):
        run_source(tmp_path, [{"path": str(tmp_path / "nope.txt")}], name="n")
    with pytest.raises(StageError, match="no files match"):
        run_source(tmp_path, [{"path": str(d), "glob": "*.parquet"}], name="m")
    with pytest.raises(StageError, match="yielded no documents"):
        run_source(tmp_path, [{"path": str(d / "empty.txt")}], name="z")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(StageError, match="bad.jsonl"):
        run_source(tmp_path, [{"path": str(bad_json)}], name="j")


def test_ten_megabyte_single_line(tmp_path):
    f = tmp_path / "big.txt"
    f.write_text("word " * 2_100_000)
    (tmp_path / "small.txt").write_text("x")
    dd, m = run_source(tmp_path, [{"path": str(f)}])
    assert len(dd["train"][0]["text"]) == len("word " * 2_100_000)
    dd, m = run_source(tmp_path, [{"path": [str(f), str(tmp_path / "small.txt")], "max_chars": 1_000_000}],
                       name="capped")
    assert list(dd["train"]["text"]) == ["x"] and m["skipped_long_documents"] == 1


def test_hub_source_fails_at_once_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(StageError, match="upstage/Pretraining_Dataset.*offline"):
        run_source(tmp_path, [{"dataset": "upstage/Pretraining_Dataset", "split": "train"}])
    assert time.perf_counter() - t < 30


def test_hub_source_fails_at_once_without_network(tmp_path, monkeypatch):
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    t = time.perf_counter()
    with pytest.raises(StageError, match="not reachable"):
        run_source(tmp_path, [{"type": "hub", "dataset": "upstage/Pretraining_Dataset", "streaming": True,
                               "take": 100}])
    assert time.perf_counter() - t < 10


def test_killed_source_reuses_finished_shards(tmp_path, data_dir):
    """Each source is a checkpoint shard: a re-run after a failure in the
    second source reuses the first."""
    src = [{"path": str(data_dir / "tinyshakespeare.txt"), "split_by": "blank_lines"},
           {"path": str(tmp_path / "later.txt")}]
    with pytest.raises(StageError):
        run_stage(SourceStage, {"sources": src}, workdir=tmp_path / "k")
    (tmp_path / "later.txt").write_text("now it exists")
    r = run_stage(SourceStage, {"sources": src}, workdir=tmp_path / "k")
    assert r.metrics["shards_reused"] == 0  # the file list changed, so the key did: nothing stale is reused
    r2 = run_stage(SourceStage, {"sources": src}, workdir=tmp_path / "k")
    assert r2.metrics["shards_reused"] == 2 and r2.metrics["shards_computed"] == 0


def test_source_params_are_pleasant():
    p = SourceParams.model_validate({"sources": [{"path": "x.txt"}, {"dataset": "a/b"}]})
    assert [s.type for s in p.sources] == ["files", "hub"]
    with pytest.raises(ValidationError):
        SourceParams.model_validate({"sources": [{"path": "x.txt", "colum": "text"}]})
    assert re.search("blank_lines", SourceParams.model_json_schema().__repr__())


def test_keep_columns_carried_with_types_and_nulls_across_sources(tmp_path, data_dir):
    from recipe_runner_stages.data.filter import FilterStage

    with open(data_dir / "TruthfulQA.csv", newline="") as f:
        tqa = list(csv.DictReader(f))
    alpaca = [a for a in json.loads((data_dir / "instruction-data.json").read_text()) if a["output"].strip()]
    paras = [p for p in (data_dir / "tinyshakespeare.txt").read_text().split("\n\n") if p.strip()][:50]
    numbered = tmp_path / "numbered.jsonl"
    numbered.write_text("".join(json.dumps({"body": p, "n": i, "url": f"https://example.org/{i}"}) + "\n"
                                for i, p in enumerate(paras)))
    dd, m = run_source(tmp_path, [
        {"path": str(data_dir / "TruthfulQA.csv"), "text_column": "Question", "keep_columns": ["Category", "Type"],
         "name": "tqa"},
        {"path": str(data_dir / "instruction-data.json"), "text_column": "output", "keep_columns": ["instruction"],
         "name": "alpaca"},
        {"path": str(numbered), "text_column": "body", "keep_columns": ["n", "url"], "name": "numbered"},
        {"path": str(data_dir / "the-verdict.txt"), "name": "verdict"},
    ], validation=40)
    train = dd["train"]
    assert train.column_names == ["text", "source", "Category", "Type", "instruction", "n", "url"]
    assert str(train.features["n"].dtype) == "int64"  # the JSON integers stay integers
    rows = [r for split in ("train", "validation") for r in dd[split]]
    assert len(rows) == len(tqa) + len(alpaca) + len(paras) + 1
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)
    assert {(r["text"], r["Category"], r["Type"]) for r in by_source["tqa"]} == \
        {(t["Question"], t["Category"], t["Type"]) for t in tqa}
    assert all(r["instruction"] is None and r["n"] is None for r in by_source["tqa"])
    assert {(r["text"], r["instruction"]) for r in by_source["alpaca"]} == \
        {(a["output"], a["instruction"]) for a in alpaca}
    assert sorted((r["n"], r["url"], r["text"]) for r in by_source["numbered"]) == \
        [(i, f"https://example.org/{i}", p) for i, p in enumerate(paras)]
    assert all(r[c] is None for r in by_source["verdict"] for c in ("Category", "Type", "instruction", "n", "url"))

    # later stages carry the kept columns along, row-aligned with the text
    from datasets import load_from_disk

    from recipe_runner.artifacts import Artifact

    r = run_stage(FilterStage, {"filters": [{"type": "length", "min_words": 12}]},
                  inputs={"dataset": Artifact("dataset", tmp_path / "s" / "output" / "dataset")},
                  workdir=tmp_path / "f")

    kept = load_from_disk(str(r.outputs["dataset"].path))["train"]
    assert kept.column_names == train.column_names and 0 < len(kept) < len(train)
    expected = {r["text"]: r for r in train}
    assert all(row == expected[row["text"]] for row in kept)


def test_keep_columns_errors(tmp_path, data_dir):
    with pytest.raises(StageError, match=r"no column\(s\) \['Nope'\] named in keep_columns"):
        run_source(tmp_path, [{"path": str(data_dir / "TruthfulQA.csv"), "text_column": "Question",
                               "keep_columns": ["Nope"]}], name="a")
    with pytest.raises(StageError, match="keep_columns applies to JSON/Parquet/CSV/hub data"):
        run_source(tmp_path, [{"path": str(data_dir / "the-verdict.txt"), "keep_columns": ["x"]}], name="b")
    ints = tmp_path / "ints.jsonl"
    ints.write_text(json.dumps({"text": "one document", "n": 1}) + "\n")
    strs = tmp_path / "strs.jsonl"
    strs.write_text(json.dumps({"text": "another document", "n": "one"}) + "\n")
    with pytest.raises(StageError, match="kept column 'n' has type .* in source 'strs'"):
        run_source(tmp_path, [{"path": str(ints), "keep_columns": ["n"]}, {"path": str(strs), "keep_columns": ["n"]}],
                   name="c")
    with pytest.raises(ValidationError, match="cannot be kept"):
        SourceParams.model_validate({"sources": [{"path": str(ints), "keep_columns": ["text"]}]})
