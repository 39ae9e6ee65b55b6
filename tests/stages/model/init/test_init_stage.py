"""The init stage as a whole: clear failures (bad slices, offline hub, no
tokenizer), plan-time cross-checks and the facts it declares."""

from __future__ import annotations

import pytest

from recipe_runner import MAX_POSITIONS, SEQ_LENGTH, PlanView, StageError, Upstream
from recipe_runner.registry import default_registry
from recipe_runner.stage import Params
from recipe_runner.testing import run_stage
from recipe_runner_stages.model.init.stage import InitStage


def test_bad_slices_and_offline_hub_fail_clearly(base_model, tmp_path, monkeypatch, tiny_config):
    with pytest.raises(StageError, match="past the base model's 4 layers"):
        run_stage(
            InitStage,
            {"layer_slices": [[0, 3], [2, 6]]},
            inputs={"model": base_model.outputs["model"]},
            workdir=tmp_path / "a",
        )
    with pytest.raises(Exception, match="empty or negative"):
        InitStage.Params.model_validate({"layer_slices": [[3, 3]]})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StageError, match="offline"):
        run_stage(InitStage, {"from_pretrained": "upstage/TinySolar-248m-4k"}, workdir=tmp_path / "b")
    with pytest.raises(StageError, match="needs a tokenizer"):
        run_stage(InitStage, {"config": tiny_config}, workdir=tmp_path / "c")


class _PackParams(Params):
    max_seq_length: int


def _packed(seq_len: int) -> Upstream:
    """A packed-dataset upstream whose rows are ``seq_len`` tokens long."""
    return Upstream("pack", "pack", _PackParams(max_seq_length=seq_len), {SEQ_LENGTH: seq_len})


def test_cross_checks(tiny_config):
    """pretrain (found as a plugin, like the runner finds it) reads the facts
    init declares; init's own checks need a base for slicing."""
    pretrain = default_registry().load("pretrain")
    init_p = InitStage.Params.model_validate({"config": {**tiny_config, "max_position_embeddings": 64}})
    model_facts = InitStage.output_facts(init_p, {})["model"]
    assert model_facts == {MAX_POSITIONS: 64}
    view = PlanView(
        "pretrain",
        pretrain.Params(),
        {"model": Upstream("init", "init", init_p, model_facts), "dataset": _packed(128)},
    )
    errors = pretrain.cross_check(view)
    assert errors and "max_position_embeddings (64)" in errors[0]
    view.upstream["dataset"] = _packed(64)
    assert pretrain.cross_check(view) == []
    scale = InitStage.Params.model_validate({"layer_slices": [[0, 2]]})
    assert any("needs a base model" in e for e in InitStage.cross_check(PlanView("scale", scale, {})))
    pretrained = Upstream("pre", "pretrain", pretrain.Params(), model_facts)
    assert InitStage.cross_check(PlanView("scale", scale, {"model": pretrained})) == []
    # slicing keeps the input model's positions
    assert InitStage.output_facts(scale, {"model": model_facts}) == {"model": {MAX_POSITIONS: 64}}
