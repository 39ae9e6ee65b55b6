"""trainer_args.py at validate time: non-finite floats, negative counts and
steps, and trackers that are not installed are refused by `recipe validate`
(exit 2, each problem located at its line), before any stage runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: runs the CLI with the named packages made unfindable (sys.modules[name] = None)
CLI_WITHOUT = "import sys\nfor m in sys.argv[1].split(','):\n    sys.modules[m] = None\n" + (
    "from recipe_runner.cli import main\nsys.argv = ['recipe', *sys.argv[2:]]\nsys.exit(main())"
)


def _sft_recipe(tmp_path: Path, params: str) -> Path:
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n')
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(f"""\
        name: bad
        stages:
          - type: sft
            params:
              model_name_or_path: {tmp_path}
              data_path: {data}
        """)
        + textwrap.indent(textwrap.dedent(params), " " * 6)
    )
    return recipe


def _validate(recipe: Path, without: str = "") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-c", CLI_WITHOUT, without, "validate", str(recipe)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_nonsense_numbers_are_refused_at_validate_time(tmp_path: Path) -> None:
    recipe = _sft_recipe(
        tmp_path,
        """\
        learning_rate: .inf
        max_grad_norm: .nan
        num_train_epochs: -3
        warmup_steps: -1
        """,
    )
    proc = _validate(recipe)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert f"{recipe}:7:7" in out and "learning_rate: Input should be a finite number" in out
    assert f"{recipe}:8:7" in out and "max_grad_norm: Input should be a finite number" in out
    assert f"{recipe}:9:7" in out and "num_train_epochs: Input should be greater than 0" in out
    assert f"{recipe}:10:7" in out and "warmup_steps" in out


@pytest.mark.parametrize(("max_steps", "message"), [(-5, "greater than or equal to -1"), (0, "at least 1, or -1")])
def test_max_steps_is_positive_or_minus_one(tmp_path: Path, max_steps: int, message: str) -> None:
    proc = _validate(_sft_recipe(tmp_path, f"max_steps: {max_steps}\n"))
    assert proc.returncode == 2 and message in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_max_steps_minus_one_trains_by_epochs(tmp_path: Path) -> None:
    proc = _validate(_sft_recipe(tmp_path, "max_steps: -1\nnum_train_epochs: 0.5\n"))
    assert proc.returncode == 0 and "ok (1 stages: sft)" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_a_tracker_that_is_not_installed_is_refused_naming_the_pip_command(tmp_path: Path) -> None:
    recipe = _sft_recipe(tmp_path, "report_to: [tensorboard]\n")
    proc = _validate(recipe, without="tensorboard")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert f"{recipe}:7:7" in out and "report_to tensorboard: not installed" in out
    assert 'pip install "recipe-runner[tracking]"' in out
    installed = _validate(recipe)
    assert installed.returncode == 0, installed.stdout + installed.stderr
