"""The source stage on structured files: JSON Lines, JSON, CSV and Parquet,
plain and gzipped, and malformed JSON located."""

from __future__ import annotations

import csv
import gzip
import json
import re

import pytest

from recipe_runner import StageError


def test_structured_formats_plain_and_gzipped(tmp_path, data_dir, run_source):
    import pandas as pd

    alpaca = json.loads((data_dir / "instruction-data.json").read_text())
    with gzip.open(data_dir / "hh-rlhf-harmless-base-test.jsonl.gz", "rt") as f:
        hh = [json.loads(line) for line in f]
    with open(data_dir / "TruthfulQA.csv", newline="") as f:
        tqa = [row["Question"] for row in csv.DictReader(f)]
    with open(data_dir / "openbookqa.jsonl") as f:
        obqa = [json.loads(line) for line in f]
    pq = tmp_path / "obqa.parquet"
    pd.DataFrame(
        {"stem": [r["question"]["stem"] if isinstance(r.get("question"), dict) else str(r) for r in obqa]}
    ).to_parquet(pq)
    pq_gz = tmp_path / "obqa2.parquet.gz"
    pq_gz.write_bytes(gzip.compress(pq.read_bytes()))
    csv_gz = tmp_path / "tqa.csv.gz"
    csv_gz.write_bytes(gzip.compress((data_dir / "TruthfulQA.csv").read_bytes()))
    txt_gz = tmp_path / "verdict.txt.gz"
    txt_gz.write_bytes(gzip.compress((data_dir / "the-verdict.txt").read_bytes()))
    dd, m = run_source(
        tmp_path,
        [
            {"path": str(data_dir / "instruction-data.json"), "text_column": "output", "name": "alpaca"},
            {"path": str(data_dir / "hh-rlhf-harmless-base-test.jsonl.gz"), "text_column": "chosen", "name": "hh"},
            {"path": str(data_dir / "TruthfulQA.csv"), "text_column": "Question", "name": "tqa"},
            {"path": str(csv_gz), "text_column": "Question", "name": "tqa_gz"},
            {"path": str(pq), "text_column": "stem", "name": "obqa"},
            {"path": str(pq_gz), "text_column": "stem", "name": "obqa_gz"},
            {"path": str(txt_gz), "split_by": "lines", "name": "verdict_lines"},
        ],
    )
    t = dd["train"]
    by = {}
    for text, src in zip(t["text"], t["source"], strict=True):
        by.setdefault(src, []).append(text)
    assert by["alpaca"] == [r["output"] for r in alpaca if r["output"].strip()]
    assert by["hh"] == [r["chosen"] for r in hh]
    assert by["tqa"] == tqa and by["tqa_gz"] == tqa
    stems = list(pd.read_parquet(pq)["stem"])
    assert by["obqa"] == stems and by["obqa_gz"] == stems
    lines = [line for line in (data_dir / "the-verdict.txt").read_text().splitlines() if line.strip()]
    assert by["verdict_lines"] == [line.strip("\r\n") for line in lines]
    assert m["skipped_empty_documents"] == sum(1 for r in alpaca if not r["output"].strip())


def test_a_malformed_json_line_is_named_by_file_and_line(tmp_path, data_dir, run_source):
    """The builder's error names neither: the stage finds the file (among
    several, gzipped too) and the first line that is not a JSON object."""
    good = data_dir / "openbookqa.jsonl"
    lines = good.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([*lines[:40], '{"text": "fine"', *lines[40:60]]) + "\n")
    with pytest.raises(
        StageError, match=rf"cannot read json data: {re.escape(str(bad))}:41:16: Expecting ',' delimiter"
    ):
        run_source(tmp_path, [{"path": [str(good), str(bad)], "text_column": "id"}], name="two")
    packed = tmp_path / "bad.jsonl.gz"
    packed.write_bytes(gzip.compress(bad.read_bytes()))
    with pytest.raises(StageError, match=rf"{re.escape(str(packed))}:41:16"):
        run_source(tmp_path, [{"path": str(packed), "text_column": "id"}], name="gz")
    array = tmp_path / "rows.json"
    array.write_text('[\n  {"text": "one"},\n  {"text": "two"\n]\n')
    with pytest.raises(StageError, match=rf"{re.escape(str(array))}:4:1: Expecting ',' delimiter"):
        run_source(tmp_path, [{"path": str(array)}], name="array")
