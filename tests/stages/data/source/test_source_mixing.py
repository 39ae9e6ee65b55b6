"""Mixing sources by counts and weights, the seeded validation split, and
counts too large for the machine."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from recipe_runner import StageError
from recipe_runner.testing import run_stage
from recipe_runner_stages.data.source.stage import SourceParams, SourceStage


def test_mixing_by_counts_weights_and_repetition(tmp_path, data_dir, run_source, stdlib):
    shakes = {"path": str(data_dir / "tinyshakespeare.txt"), "split_by": "blank_lines", "name": "web"}
    code = {"path": str(stdlib / "json"), "glob": "*.py", "name": "code"}
    n_code = len([f for f in (stdlib / "json").glob("*.py") if f.read_text().strip()])
    dd, m = run_source(tmp_path, [{**shakes, "count": 600}, {**code, "count": 3 * n_code + 2}], name="c")
    src = list(dd["train"]["source"])
    assert src.count("web") == 600 and src.count("code") == 3 * n_code + 2
    texts = list(dd["train"]["text"])
    code_texts = [t for t, s in zip(texts, src, strict=True) if s == "code"]
    assert all(code_texts.count(t) in (3, 4) for t in code_texts)  # whole passes plus a sample
    # the same seed gives the same sample, another seed another one
    dd_again, _ = run_source(tmp_path, [{**shakes, "count": 600}, {**code, "count": 3 * n_code + 2}], name="c2")
    assert list(dd_again["train"]["text"]) == texts
    r = run_stage(SourceStage, {"sources": [{**shakes, "count": 600}], "seed": 123}, workdir=tmp_path / "c3")
    from datasets import load_from_disk

    other = list(load_from_disk(str(r.outputs["dataset"].path))["train"]["text"])
    assert other != [t for t, s in zip(texts, src, strict=True) if s == "web"]
    # weights: proportions of a total
    dd, m = run_source(tmp_path, [{**shakes, "weight": 3}, {**code, "weight": 1}], total=400, name="w")
    assert m["documents.web"] == 300 and m["documents.code"] == 100
    # weights without a total: as many as possible without repeating a source
    dd, m = run_source(tmp_path, [{**shakes, "weight": 1}, {**code, "weight": 1}], name="w2")
    assert m["documents.code"] == n_code and m["documents.web"] == n_code
    with pytest.raises(ValidationError):
        SourceParams.model_validate({"sources": [{**shakes, "weight": 1}, code]})


def test_seeded_validation_split(tmp_path, data_dir, run_source):
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


def test_a_count_beyond_memory_is_a_clear_error_not_a_memory_error(tmp_path, run_source):
    """Ten billion documents from a one-line file: 80 GB of sample indices.
    Refused before anything is allocated, naming the source."""
    from recipe_runner_stages.data.source.stage import physical_memory

    if physical_memory() >= 8 * 10**10:
        pytest.skip("this machine could hold the indices")
    one = tmp_path / "one.txt"
    one.write_text("a single document")
    with pytest.raises(StageError, match=r"source 'one': 10000000000 documents asked for \(of 1\) need 74.5 GiB"):
        run_source(tmp_path, [{"path": str(one), "count": 10**10}])
