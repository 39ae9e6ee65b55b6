"""The quantize stage's numbers, refused by `recipe validate` with the place
in the recipe; -1 (per-channel) and positive group sizes pass."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from recipe_runner.cli import app
from recipe_runner_stages.deploy.quantize.params import QuantizeParams


@pytest.mark.parametrize(
    "params,where,message",
    [
        ("{method: gptq, group_size: 0}", "params.group_size", "group_size 0 is not valid"),
        ("{method: gptq, group_size: -2}", "params.group_size", "greater than or equal to -1"),
        ("{max_eval_tokens: 1}", "params.max_eval_tokens", "greater than or equal to 2"),
        ("{max_new_tokens: -1}", "params.max_new_tokens", "greater than or equal to 0"),
        ("{calibration_samples: 0}", "params.calibration_samples", "greater than or equal to 1"),
    ],
)
def test_bad_numbers_are_refused_where_they_are(tmp_path, tiny_model_dir, params, where, message):
    recipe = tmp_path / "r.yaml"
    init = f"  - type: init\n    params: {{from_pretrained: {tiny_model_dir}}}\n"
    recipe.write_text(f"name: r\nstages:\n{init}  - type: quantize\n    params: {params}\n")
    result = CliRunner().invoke(app, ["validate", str(recipe)])
    assert result.exit_code == 2
    assert "r.yaml:6:" in result.output and f"stage 'quantize': stages[1].{where}" in result.output
    assert message in result.output


def test_per_channel_and_positive_group_sizes_pass():
    assert QuantizeParams(group_size=-1).group_size == -1 and QuantizeParams(group_size=32).group_size == 32
    assert QuantizeParams(max_new_tokens=0).max_new_tokens == 0  # 0 skips the sample
