"""The TinySolar recipes: all three validate offline with the intended wiring;
the offline one runs end to end (slow: ~2-3 minutes on 2 cores)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recipe_runner.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[3] / "recipes"


def test_recipes_validate_with_the_course_wiring():
    local = load_recipe(RECIPES / "tinysolar_upscale.yaml")
    stages = {s.name: s for s in local.stages}
    up = stages["upscale"]
    assert up.type == "scale" and [list(s) for s in up.params.layer_slices] == [[0, 8], [4, 12]]
    assert up.bindings["model"].stage == "pretrain_base"
    assert stages["pretrain_upscaled"].bindings["model"].stage == "upscale"
    assert stages["base_init"].bindings["tokenizer"].stage == "tokenize"
    assert stages["base_init"].params.config["num_hidden_layers"] == 12
    assert stages["export"].bindings["report"].stage == "eval"
    assert any(t.name == "truthfulqa_mc2_local" for t in stages["eval"].params.tasks)

    hub = {s.name: s for s in load_recipe(RECIPES / "tinysolar_upscale_hub.yaml").stages}
    assert hub["upscale"].params.from_pretrained == "upstage/TinySolar-248m-4k"
    assert hub["tokenize"].params.tokenizer == "upstage/SOLAR-10.7B-v1.0"
    assert hub["pretrain"].params.learning_rate == 5e-5 and hub["pack"].params.max_seq_length == 32
    assert hub["eval"].params.tasks[0].name == "truthfulqa_mc2"

    vs = {s.name: s for s in load_recipe(RECIPES / "upscale_vs_scratch.yaml").stages}
    tokens = {n: vs[n].params.max_steps * vs[n].params.per_device_train_batch_size
              for n in ("pretrain_upscaled", "pretrain_scratch")}
    assert tokens["pretrain_upscaled"] == tokens["pretrain_scratch"]  # the same token budget
    assert vs["scratch_init"].params.config["num_hidden_layers"] == 16
    assert "model" not in vs["scratch_init"].bindings or vs["scratch_init"].bindings["model"] is None


@pytest.mark.slow
def test_tinysolar_upscale_runs_end_to_end(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "recipe_runner.cli", "run", str(RECIPES / "tinysolar_upscale.yaml"),
                           "--workdir", str(tmp_path)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "tinysolar-upscale" / "manifest.json").read_text())
    by_name = {s["name"]: s for s in manifest["stages"]}
    assert all(s["status"] == "done" for s in manifest["stages"])
    assert by_name["upscale"]["metrics"]["num_layers"] == 16
    base, cont = by_name["pretrain_base"]["metrics"], by_name["pretrain_upscaled"]["metrics"]
    assert cont["eval_loss"] < base["eval_loss"] < base["first_train_loss"]
    ev = by_name["eval"]["metrics"]
    assert 0 <= ev["truthfulqa_mc2_local/acc"] <= 1 and ev["perplexity"] > 1
    export = Path(by_name["export"]["artifact"])
    assert (export / "README.md").is_file() and (export / "model.safetensors").is_file()
