"""The init stage's numbers, refused by `recipe validate` with the place in
the recipe: an infinite init std, a vocabulary of 0, a config size of 0; the
course's shapes pass."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from recipe_runner.cli import app
from recipe_runner_stages.model.init.params import InitParams

SHAPE = "{num_hidden_layers: 2, hidden_size: 32, intermediate_size: 64, num_attention_heads: 4, vocab_size: 300}"


@pytest.mark.parametrize(
    "params,where,message",
    [
        (f"{{config: {SHAPE}, init_std: .inf}}", "params.init_std", "finite number"),
        (f"{{config: {SHAPE}, init_std: 0}}", "params.init_std", "greater than 0"),
        (f"{{config: {SHAPE}, vocab_size: 0}}", "params.vocab_size", "'auto' or at least 1, not 0"),
        ("{config: {num_hidden_layers: 0, vocab_size: 300}}", "params.config", "config.num_hidden_layers"),
        ("{config: {hidden_size: 32.5, vocab_size: 300}}", "params.config", "whole number of at least 1"),
    ],
)
def test_bad_numbers_are_refused_where_they_are(tmp_path, params, where, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nstages:\n  - type: init\n    params: {params}\n")
    result = CliRunner().invoke(app, ["validate", str(recipe)])
    assert result.exit_code == 2
    assert "r.yaml:4:" in result.output and f"stage 'init': stages[0].{where}" in result.output
    assert message in result.output


def test_good_numbers_pass():
    p = InitParams.model_validate({"config": {"num_hidden_layers": 12, "hidden_size": 64}, "vocab_size": 4096})
    assert p.vocab_size == 4096 and InitParams(vocab_size="auto", init_std=0.02).init_std == 0.02
