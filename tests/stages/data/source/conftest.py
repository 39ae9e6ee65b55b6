"""Fixtures of the source tests."""

from __future__ import annotations

import pytest

from recipe_runner.testing import run_stage
from recipe_runner_stages.data.source.stage import SourceStage


@pytest.fixture()
def run_source():
    """``run_source(tmp_path, sources, name="s", **params) -> (DatasetDict, metrics)``: the source stage, seed 7."""

    def run(tmp_path, sources, name="s", **params):
        from datasets import load_from_disk

        r = run_stage(SourceStage, {"sources": sources, **params}, workdir=tmp_path / name, seed=7)
        return load_from_disk(str(r.outputs["dataset"].path)), r.metrics

    return run
