"""`recipe new-stage NAME`: a ready-to-install stage plugin package."""

from __future__ import annotations

import re
from pathlib import Path

PYPROJECT = """[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "recipe-stage-{dash}"
version = "0.1.0"
description = "A recipe-runner stage plugin: {name}"
requires-python = ">=3.10"
dependencies = ["recipe-runner"]

[project.optional-dependencies]
test = ["pytest"]

# This line is the whole registration: `recipe stages` lists it once installed.
[project.entry-points."recipe_runner.stages"]
{name} = "{pkg}:{cls}"

[tool.setuptools]
packages = ["{pkg}"]
"""

MODULE = '''"""The `{name}` stage.  Use it in a recipe as:

    stages:
      - type: {name}
        params: {{min_chars: 10}}
"""
from __future__ import annotations

from pydantic import Field

from recipe_runner import DATASET, Input, Params, Stage, StageContext, StageError


class {cls}Params(Params):
    min_chars: int = Field(1, ge=0, description="drop documents shorter than this many characters")
    text_column: str = Field("text", description="column that holds the text")


class {cls}(Stage):
    """Keep documents with at least `min_chars` characters (replace with your logic)."""

    name = "{name}"
    version = "1"  # bump when behaviour changes: cached outputs of older versions are not reused
    Params = {cls}Params
    inputs = {{"dataset": Input(DATASET)}}
    outputs = {{"dataset": DATASET}}

    def run(self, ctx: StageContext) -> None:
        # heavy imports inside run(): `recipe validate` stays fast
        from datasets import load_from_disk

        p: {cls}Params = ctx.params
        ds = load_from_disk(str(ctx.input("dataset").path))
        for split in ds:
            if p.text_column not in ds[split].column_names:
                raise StageError(f"split {{split!r}} has no column {{p.text_column!r}}")
        before = sum(len(ds[s]) for s in ds)
        ds = ds.filter(lambda batch: [len(t) >= p.min_chars for t in batch[p.text_column]], batched=True)
        ds.save_to_disk(str(ctx.output_path("dataset")))
        ctx.metrics["documents_in"] = before
        ctx.metrics["documents_out"] = sum(len(ds[s]) for s in ds)
'''

TEST = """from datasets import Dataset, DatasetDict

from recipe_runner import Artifact, DATASET
from recipe_runner.testing import run_stage
from {pkg} import {cls}


def test_{name}_keeps_long_documents(tmp_path):
    src = tmp_path / "in"
    DatasetDict({{"train": Dataset.from_dict({{"text": ["short", "a much longer document"]}})}}).save_to_disk(str(src))
    result = run_stage({cls}, {{"min_chars": 10}}, inputs={{"dataset": Artifact(DATASET, src)}}, workdir=tmp_path / "w")
    assert result.metrics == {{"documents_in": 2, "documents_out": 1}}
"""


def scaffold(name: str, dest: Path) -> Path:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"stage name '{name}' must be lowercase letters, digits and '_', starting with a letter")
    pkg = f"recipe_stage_{name}"
    cls = "".join(part.capitalize() for part in name.split("_")) + "Stage"
    root = Path(dest) / f"recipe-stage-{name.replace('_', '-')}"
    if root.exists():
        raise ValueError(f"{root} already exists")
    (root / pkg).mkdir(parents=True)
    (root / "tests").mkdir()
    fmt = {"name": name, "dash": name.replace("_", "-"), "pkg": pkg, "cls": cls}
    (root / "pyproject.toml").write_text(PYPROJECT.format(**fmt))
    (root / pkg / "__init__.py").write_text(MODULE.format(**fmt))
    (root / "tests" / f"test_{name}.py").write_text(TEST.format(**fmt))
    (root / "README.md").write_text(
        f"# recipe-stage-{fmt['dash']}\n\nA recipe-runner stage plugin `{name}`.\n\n"
        f"    pip install -e .\n    recipe stages {name}\n    pytest\n"
    )
    return root
