"""The README stays true: its first lines are the two commands (the second is
the one .ci/run runs), and its example recipe validates."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_first_lines_are_the_two_commands():
    lines = [line.strip() for line in README.splitlines()[1:6] if line.strip()]
    main, tests = lines[0], lines[1]
    assert "pip install torch==2.13.0" in main and main.endswith("recipe run recipes/tinysolar_upscale.yaml")
    assert tests.endswith("python -m pytest -q")
    ci = (ROOT / ".ci" / "run").read_text()
    install = tests.split("&& ", 2)[2].split(" && python -m pytest")[0]
    assert install in ci and "python -m pytest -q" in ci


def test_readme_recipe_validates(recipe_cli, tmp_path):
    block = re.search(r"```yaml\n(name: my-model.*?)```", README, re.S).group(1)
    recipe = tmp_path / "my-model.yaml"
    recipe.write_text(block)
    proc = recipe_cli("validate", str(recipe))
    assert proc.returncode == 0, proc.stderr
