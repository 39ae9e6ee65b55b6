"""The source stage on text files: whole files, paragraphs, lines,
separators, and a 10 MB single line."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from recipe_runner_stages.data.source.stage import SourceParams


def test_text_files_whole_and_by_blank_lines(tmp_path, data_dir, run_source):
    dd, m = run_source(
        tmp_path,
        [
            {"path": str(data_dir / "the-verdict.txt")},
            {"path": str(data_dir / "tinyshakespeare.txt"), "split_by": "blank_lines", "name": "shakespeare"},
        ],
    )
    verdict = (data_dir / "the-verdict.txt").read_text()
    paras = [p.strip("\n") for p in (data_dir / "tinyshakespeare.txt").read_text().split("\n\n") if p.strip()]
    train = dd["train"]
    assert train[0]["text"] == verdict and train[0]["source"] == "the-verdict"
    assert list(train["text"][1:]) == paras
    assert set(train["source"][1:]) == {"shakespeare"}
    assert m["documents.shakespeare"] == len(paras) and m["documents.the-verdict"] == 1


def test_separator_and_regex_splits(tmp_path, run_source):
    f = tmp_path / "docs.txt"
    f.write_text("first doc\n<|endoftext|>\nsecond doc\n<|endoftext|>\n\n<|endoftext|>third")
    dd, _ = run_source(tmp_path, [{"path": str(f), "split_by": "separator", "separator": "<|endoftext|>"}])
    assert list(dd["train"]["text"]) == ["first doc", "second doc", "third"]
    dd, _ = run_source(
        tmp_path, [{"path": str(f), "split_by": "regex", "separator": r"\n?<\|endoftext\|>\n?"}], name="r"
    )
    assert list(dd["train"]["text"]) == ["first doc", "second doc", "third"]
    with pytest.raises(ValidationError, match="regular expression"):
        SourceParams.model_validate({"sources": [{"path": str(f), "split_by": "regex", "separator": "("}]})


def test_ten_megabyte_single_line(tmp_path, run_source):
    f = tmp_path / "big.txt"
    f.write_text("word " * 2_100_000)
    (tmp_path / "small.txt").write_text("x")
    dd, m = run_source(tmp_path, [{"path": str(f)}])
    assert len(dd["train"][0]["text"]) == len("word " * 2_100_000)
    dd, m = run_source(
        tmp_path, [{"path": [str(f), str(tmp_path / "small.txt")], "max_chars": 1_000_000}], name="capped"
    )
    assert list(dd["train"]["text"]) == ["x"] and m["skipped_long_documents"] == 1
