"""Fixtures of the filter tests."""

from __future__ import annotations

import pytest

from recipe_runner.testing import run_stage
from recipe_runner_stages.data.filter.stage import FilterStage


@pytest.fixture()
def run_filter(save_texts, load_split):
    """``run_filter(tmp_path, texts, filters, name="f", **params) -> (kept texts, metrics)``:
    the filter stage over a dataset of ``texts``."""

    def run(tmp_path, texts, filters, name="f", **params):
        art = save_texts(tmp_path / f"{name}-in", texts)
        r = run_stage(FilterStage, {"filters": filters, **params}, inputs={"dataset": art}, workdir=tmp_path / name)
        return list(load_split(r.outputs["dataset"])["text"]), r.metrics

    return run


@pytest.fixture(scope="module")
def prose(data_dir) -> str:
    """Two real paragraphs of The Verdict: ordinary English prose."""
    text = (data_dir / "the-verdict.txt").read_text()
    paras = [p for p in text.split("\n\n") if len(p.split()) > 60]
    return "\n\n".join(paras[:2])
