"""The source stage: malformed input, resuming, its parameters, and kept
columns carried with their types."""

from __future__ import annotations

import csv
import json
import re

import pytest
from pydantic import ValidationError

from recipe_runner import StageError
from recipe_runner.testing import run_stage
from recipe_runner_stages.data.source.stage import SourceParams, SourceStage


def test_malformed_files_are_counted_skips_or_clear_errors(tmp_path, data_dir, run_source):
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


def test_killed_source_reuses_finished_shards(tmp_path, data_dir):
    """Each source is a checkpoint shard: a re-run after a failure in the
    second source reuses the first."""
    src = [
        {"path": str(data_dir / "tinyshakespeare.txt"), "split_by": "blank_lines"},
        {"path": str(tmp_path / "later.txt")},
    ]
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


def test_keep_columns_carried_with_types_and_nulls_across_sources(tmp_path, data_dir, run_source):
    from recipe_runner_stages.data.filter.stage import FilterStage

    with open(data_dir / "TruthfulQA.csv", newline="") as f:
        tqa = list(csv.DictReader(f))
    alpaca = [a for a in json.loads((data_dir / "instruction-data.json").read_text()) if a["output"].strip()]
    paras = [p for p in (data_dir / "tinyshakespeare.txt").read_text().split("\n\n") if p.strip()][:50]
    numbered = tmp_path / "numbered.jsonl"
    numbered.write_text(
        "".join(json.dumps({"body": p, "n": i, "url": f"https://example.org/{i}"}) + "\n" for i, p in enumerate(paras))
    )
    dd, m = run_source(
        tmp_path,
        [
            {
                "path": str(data_dir / "TruthfulQA.csv"),
                "text_column": "Question",
                "keep_columns": ["Category", "Type"],
                "name": "tqa",
            },
            {
                "path": str(data_dir / "instruction-data.json"),
                "text_column": "output",
                "keep_columns": ["instruction"],
                "name": "alpaca",
            },
            {"path": str(numbered), "text_column": "body", "keep_columns": ["n", "url"], "name": "numbered"},
            {"path": str(data_dir / "the-verdict.txt"), "name": "verdict"},
        ],
        validation=40,
    )
    train = dd["train"]
    assert train.column_names == ["text", "source", "Category", "Type", "instruction", "n", "url"]
    assert str(train.features["n"].dtype) == "int64"  # the JSON integers stay integers
    rows = [r for split in ("train", "validation") for r in dd[split]]
    assert len(rows) == len(tqa) + len(alpaca) + len(paras) + 1
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)
    assert {(r["text"], r["Category"], r["Type"]) for r in by_source["tqa"]} == {
        (t["Question"], t["Category"], t["Type"]) for t in tqa
    }
    assert all(r["instruction"] is None and r["n"] is None for r in by_source["tqa"])
    assert {(r["text"], r["instruction"]) for r in by_source["alpaca"]} == {
        (a["output"], a["instruction"]) for a in alpaca
    }
    assert sorted((r["n"], r["url"], r["text"]) for r in by_source["numbered"]) == [
        (i, f"https://example.org/{i}", p) for i, p in enumerate(paras)
    ]
    assert all(r[c] is None for r in by_source["verdict"] for c in ("Category", "Type", "instruction", "n", "url"))

    # later stages carry the kept columns along, row-aligned with the text
    from datasets import load_from_disk

    from recipe_runner.artifacts import Artifact

    r = run_stage(
        FilterStage,
        {"filters": [{"type": "length", "min_words": 12}]},
        inputs={"dataset": Artifact("dataset", tmp_path / "s" / "output" / "dataset")},
        workdir=tmp_path / "f",
    )

    kept = load_from_disk(str(r.outputs["dataset"].path))["train"]
    assert kept.column_names == train.column_names and 0 < len(kept) < len(train)
    expected = {r["text"]: r for r in train}
    assert all(row == expected[row["text"]] for row in kept)


def test_keep_columns_errors(tmp_path, data_dir, run_source):
    with pytest.raises(StageError, match=r"no column\(s\) \['Nope'\] named in keep_columns"):
        run_source(
            tmp_path,
            [{"path": str(data_dir / "TruthfulQA.csv"), "text_column": "Question", "keep_columns": ["Nope"]}],
            name="a",
        )
    with pytest.raises(StageError, match="keep_columns applies to JSON/Parquet/CSV/hub data"):
        run_source(tmp_path, [{"path": str(data_dir / "the-verdict.txt"), "keep_columns": ["x"]}], name="b")
    ints = tmp_path / "ints.jsonl"
    ints.write_text(json.dumps({"text": "one document", "n": 1}) + "\n")
    strs = tmp_path / "strs.jsonl"
    strs.write_text(json.dumps({"text": "another document", "n": "one"}) + "\n")
    with pytest.raises(StageError, match="kept column 'n' has type .* in source 'strs'"):
        run_source(
            tmp_path, [{"path": str(ints), "keep_columns": ["n"]}, {"path": str(strs), "keep_columns": ["n"]}], name="c"
        )
    with pytest.raises(ValidationError, match="cannot be kept"):
        SourceParams.model_validate({"sources": [{"path": str(ints), "keep_columns": ["text"]}]})
