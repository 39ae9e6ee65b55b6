"""The export stage's shard size: refused by `recipe validate` with the place
in the recipe unless it is what transformers reads (a whole number and a
unit; not '500mb', which transformers would read as megabits)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from recipe_runner.cli import app
from recipe_runner_stages.deploy.export.params import ExportParams


@pytest.mark.parametrize("size", ["lots", "0GB", "1.5GB", "-2MB", "2 GB", "500", "500mb"])
def test_a_shard_size_that_is_not_a_size_is_refused_where_it_is(tmp_path, tiny_model_dir, size):
    recipe = tmp_path / "r.yaml"
    init = f"  - type: init\n    params: {{from_pretrained: {tiny_model_dir}}}\n"
    recipe.write_text(f"name: r\nstages:\n{init}  - type: export\n    params: {{max_shard_size: '{size}'}}\n")
    result = CliRunner().invoke(app, ["validate", str(recipe)])
    assert result.exit_code == 2
    assert "r.yaml:6:" in result.output and "stage 'export': stages[1].params.max_shard_size" in result.output
    assert f"max_shard_size {size!r} is not a size" in result.output


@pytest.mark.parametrize(
    "size,bytes_", [("5GB", 5 * 10**9), ("100KB", 10**5), ("4GiB", 4 * 2**30), ("500MB", 5 * 10**8)]
)
def test_sizes_transformers_reads_pass(size, bytes_):
    from transformers.utils.hub import convert_file_size_to_int

    assert convert_file_size_to_int(ExportParams(max_shard_size=size).max_shard_size) == bytes_
