"""The eval stage's numbers, refused by `recipe validate` with the place in
the recipe: limits that lm-eval would misread, infinite or NaN sampling
settings and timeouts, several greedy samples; good values pass."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from recipe_runner.cli import app
from recipe_runner_stages.evaluate.params import EvalParams, TaskSpec

INIT = (
    "  - type: init\n    params: {config: {num_hidden_layers: 1, hidden_size: 32, intermediate_size: 64, "
    "num_attention_heads: 2, num_key_value_heads: 2, vocab_size: 300}}\n"
)


@pytest.mark.parametrize(
    "params,line,where,message",
    [
        ("{limit: 1.5}", 6, "params.limit", "limit 1.5 is neither a whole number of examples nor a fraction"),
        ("{limit: 0}", 6, "params.limit", "limit must be at least 1 example"),
        ("{tasks: [{name: t, limit: .inf}]}", 6, "params.tasks[0].TaskSpec.limit", "nor a fraction in (0, 1)"),
        ("{tasks: [{name: t, num_fewshot: -1}]}", 6, "params.tasks[0].TaskSpec.num_fewshot", "greater than or"),
        ("{generation: {prompts: [hi], temperature: .nan}}", 6, "params.generation.temperature", "finite number"),
        ("{generation: {prompts: [hi], top_p: 1.5}}", 6, "params.generation.top_p", "less than or equal to 1"),
        ("{generation: {prompts: [hi], num_samples: 0}}", 6, "params.generation.num_samples", "greater than or"),
        ("{generation: {prompts: [hi], do_sample: false, num_samples: 3}}", 6, "params.generation", "greedy"),
        ("{judge: {endpoint: {base_url: u, model: m, timeout_s: .inf}}}", 6, "params.judge.endpoint.timeout_s",
         "finite number"),
        ("{batch_size: 0}", 6, "params.batch_size", "greater than or equal to 1"),
    ],
)  # fmt: skip
def test_bad_numbers_are_refused_where_they_are(tmp_path, params, line, where, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nstages:\n{INIT}  - type: eval\n    params: {params}\n")
    result = CliRunner().invoke(app, ["validate", str(recipe)])
    assert result.exit_code == 2
    assert f"r.yaml:{line}:" in result.output and f"stage 'eval': stages[1].{where}" in result.output
    assert message in result.output


def test_good_numbers_pass():
    p = EvalParams.model_validate({"limit": 0.25, "tasks": [{"name": "t", "limit": 40}], "bootstrap_iters": 0})
    task = p.tasks[0]
    assert p.limit == 0.25 and isinstance(task, TaskSpec) and task.limit == 40
    g = EvalParams.model_validate({"generation": {"prompts": ["hi"], "top_k": 0, "top_p": 1.0}}).generation
    assert g is not None and g.top_k == 0 and g.do_sample and g.temperature == 0.8
