"""The judge in the eval stage: the `judge:` section, the `baseline` and
`judge_model` inputs, the saved verdict table and the metrics, the
validate-time check that the judge has its models, and the endpoint's run
settings (timeout, retries), which leave the stage's output unchanged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from recipe_runner.artifacts import MODEL, Artifact
from recipe_runner.errors import RecipeError
from recipe_runner.recipe import load_recipe
from recipe_runner.stage import is_run_setting
from recipe_runner.testing import run_stage
from recipe_runner_stages.evaluate.judge.params import EndpointParams
from recipe_runner_stages.evaluate.stage import EvalStage


@pytest.mark.parametrize("mode", ["score", "compare"])
def test_eval_runs_the_judge(mode, tiny_model_dir, tmp_path, instruction_file):
    model = Artifact(MODEL, tiny_model_dir)
    judge = {
        "mode": mode,
        "data": str(instruction_file(3)),
        "num_examples": 2,
        "response_max_new_tokens": 4,
        "max_new_tokens": 4,
        "device": "cpu",
        "precision": "fp32",
    }
    inputs = {"model": model, "judge_model": model}
    if mode == "compare":
        inputs["baseline"] = model
        judge.update(label_a="before", label_b="after")
    res = run_stage(
        EvalStage,
        {"perplexity": False, "device": "cpu", "precision": "fp32", "judge": judge},
        inputs=inputs,
        workdir=tmp_path / "w",
    )
    out = res.outputs["report"].path
    rows = [json.loads(line) for line in (out / "judge.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and (out / "judge.csv").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["judge"]["metrics"]["judge_mode"] == mode
    m = res.metrics
    if mode == "score":
        assert all("response" in r and "score" in r for r in rows)
        assert m["judge_scored"] + m["judge_unparsed"] == 2
    else:
        assert all({"response_a", "response_b", "winner"} <= set(r) for r in rows)
        # the same model on both sides gives the same responses
        assert all(r["response_a"] == r["response_b"] for r in rows)
        assert m["judge_consistent"] + m["judge_flipped"] + m["judge_unparsed"] >= 2


def test_judge_needs_its_models_at_validate_time(tmp_path, instruction_file):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: r
stages:
  - type: init
    params: {{config: {{num_hidden_layers: 1, hidden_size: 32, intermediate_size: 64, num_attention_heads: 2,
                       num_key_value_heads: 2, vocab_size: 300}}}}
  - type: eval
    params:
      judge: {{mode: compare, data: {instruction_file(3)}}}
""")
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe)
    text = e.value.format()
    assert "judge: no judge model" in text and "compare mode needs a second model" in text


def _digests(out: Path) -> dict[str, str]:
    return {
        f.relative_to(out).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in out.rglob("*") if f.is_file()
    }


@pytest.mark.parametrize("field,first,second", [("timeout_s", 60.0, 7.5), ("max_retries", 2, 0)])
def test_endpoint_run_settings_leave_the_output_unchanged(
    field, first, second, judge_server, tiny_model_dir, tmp_path, instruction_file
):
    """A run setting is out of the stage's key, so a cached output made with one value serves the other:
    the stage run with each gives the same bytes (report, verdict table)."""
    assert is_run_setting(EndpointParams, field)
    data = str(instruction_file(3))
    outputs = []
    for value in (first, second):
        endpoint = {"base_url": judge_server.url, "model": "fixed", field: value}
        judge = {"endpoint": endpoint, "data": data, "num_examples": 2, "response_max_new_tokens": 4}
        res = run_stage(
            EvalStage,
            {"perplexity": False, "device": "cpu", "precision": "fp32", "judge": judge},
            inputs={"model": Artifact(MODEL, tiny_model_dir)},
            workdir=tmp_path / f"{field}-{value}",
        )
        outputs.append(_digests(res.outputs["report"].path))
    assert {"report.json", "report.md", "judge.jsonl", "judge.csv"} <= set(outputs[0])
    assert outputs[0] == outputs[1]
