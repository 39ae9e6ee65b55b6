"""The init stage as a whole: clear failures (bad slices, offline hub, no
tokenizer), plan-time cross-checks and the facts it declares, a local base
model keyed by its content, trust_remote_code only with --trust-code, and
the permissions of the weights it writes."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recipe_runner import MAX_POSITIONS, SEQ_LENGTH, PlanView, StageError, Upstream
from recipe_runner.cli import app
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
    assert model_facts[MAX_POSITIONS] == 64  # beside the model_shape fact of the memory estimate
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
    assert InitStage.output_facts(scale, {"model": model_facts})["model"][MAX_POSITIONS] == 64


def _plan_fingerprint(recipe: Path, workdir: Path) -> str:
    result = CliRunner().invoke(app, ["plan", str(recipe), "--workdir", str(workdir), "--json"])
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)[0]["fingerprint"])


def test_a_local_base_model_is_keyed_by_its_content_not_its_path(base_model, tmp_path):
    """Two copies of the base in two places give one key; an edited copy another."""
    copies = [tmp_path / "a" / "base", tmp_path / "elsewhere" / "b" / "base"]
    for copy in copies:
        shutil.copytree(base_model.outputs["model"].path, copy)
    recipes = []
    for copy in copies:
        recipe = copy.parent / "r.yaml"
        recipe.write_text(f"name: r\nstages:\n  - type: scale\n    params: {{from_pretrained: {copy}}}\n")
        recipes.append(recipe)
    assert InitStage.local_inputs(InitStage.Params(from_pretrained=str(copies[0]))) == {"from_pretrained": copies[0]}
    keys = [_plan_fingerprint(r, tmp_path / "runs") for r in recipes]
    assert keys[0] == keys[1]
    config = copies[1] / "config.json"
    edited = config.read_text().replace('"num_hidden_layers": 4', '"num_hidden_layers":  4')  # other bytes
    assert edited != config.read_text()
    config.write_text(edited)
    assert _plan_fingerprint(recipes[1], tmp_path / "runs") != keys[0]
    hub = InitStage.Params(from_pretrained="upstage/TinySolar-248m-4k", tokenizer="upstage/SOLAR-10.7B-v1.0")
    assert InitStage.local_inputs(hub) == {}  # hub ids are keyed by name


def test_trust_remote_code_set_in_a_shared_base_needs_trust_code(tmp_path, monkeypatch, tiny_config):
    monkeypatch.delenv("RECIPE_TRUST_CODE", raising=False)
    config = json.dumps({**tiny_config, "vocab_size": 300})
    init = f"  - type: init\n    params: {{config: {config}}}\n"
    (tmp_path / "base.yaml").write_text(f"name: base\ndefaults: {{trust_remote_code: true}}\nstages:\n{init}")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nname: child\n")
    for command in (["validate", str(child)], ["run", str(child), "--workdir", str(tmp_path / "runs")]):
        refused = CliRunner().invoke(app, command)
        assert refused.exit_code == 2, refused.output
        assert "base.yaml:" in refused.output and "stage 'init': params.trust_remote_code" in refused.output
        assert "--trust-code" in refused.output
    assert not (tmp_path / "runs").exists()
    accepted = CliRunner().invoke(app, ["validate", str(child), "--trust-code"])
    assert accepted.exit_code == 0, accepted.output
    assert InitStage.runs_code(InitStage.Params()) == {}


def test_the_saved_weights_have_the_permissions_of_every_other_file(base_model):
    """safetensors writes 0600; the stage's outputs all get what the umask gives a new file."""
    umask = os.umask(0o022)
    os.umask(umask)
    out = base_model.outputs["model"].path
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in out.iterdir() if f.is_file()}
    assert "model.safetensors" in modes and modes == dict.fromkeys(modes, 0o666 & ~umask)


def test_the_model_records_the_digest_of_the_tokenizer_it_carries(base_model, tiny_tokenizer_dir):
    """The digest init records is the one of its input tokenizer, and of the tokenizer in its directory."""
    from recipe_runner_stages.common.models import load_tokenizer
    from recipe_runner_stages.common.tokenizer_digest import TOKENIZER_DIGEST, tokenizer_digest

    model = base_model.outputs["model"]
    digest = tokenizer_digest(load_tokenizer(tiny_tokenizer_dir))
    assert model.meta[TOKENIZER_DIGEST] == digest == tokenizer_digest(load_tokenizer(model.path))
