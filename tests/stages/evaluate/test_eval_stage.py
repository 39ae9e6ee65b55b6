"""The eval stage at plan time: a task directory of the recipe's that holds
Python (``!function``) runs only with --trust-code (the bundled task
directories are trusted as the package is), and the local files the stage
reads (task directories, the judge's data, judge and baseline models) are
keyed by their content."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recipe_runner.cli import app
from recipe_runner_stages.evaluate.harness import local_tasks_dir
from recipe_runner_stages.evaluate.stage import EvalStage

INIT = (
    "  - type: init\n    params: {config: {num_hidden_layers: 1, hidden_size: 32, intermediate_size: 64, "
    "num_attention_heads: 2, num_key_value_heads: 2, vocab_size: 300}}\n"
)

#: a task like the bundled openbookqa_local whose dataset loader also leaves a marker file
MARKER_TASK_YAML = """task: marker_task
custom_dataset: !function marker_task.load
output_type: multiple_choice
test_split: test
doc_to_text: question_stem
doc_to_target: "{{choices.label.index(answerKey.lstrip())}}"
doc_to_choice: "{{choices.text}}"
metric_list:
  - metric: acc
"""

MARKER_TASK_PY = """from pathlib import Path

import datasets

MARKER = Path(__file__).parent / "ran.txt"


def load(**_):
    MARKER.write_text("ran")
    rows = [{{"question_stem": "The sun is a", "choices": {{"text": ["star", "moon"], "label": ["A", "B"]}},
             "answerKey": "A"}}] * {n}
    return datasets.DatasetDict({{"test": datasets.Dataset.from_list(rows)}})
"""


def _task_dir(where: Path, *, python: bool = True) -> Path:
    where.mkdir(parents=True)
    (where / "marker_task.yaml").write_text(MARKER_TASK_YAML)
    if python:
        (where / "marker_task.py").write_text(MARKER_TASK_PY.format(n=2))
    return where


def _recipe(path: Path, include: str, init: str = INIT) -> Path:
    path.write_text(f"name: r\nstages:\n{init}  - type: eval\n    params:\n      tasks: [marker_task]\n"
                    f"      limit: 2\n      include_path: [{include!r}]\n      device: cpu\n")  # fmt: skip
    return path


@pytest.fixture(autouse=True)
def _trust_by_flag_only(monkeypatch):
    monkeypatch.delenv("RECIPE_TRUST_CODE", raising=False)


def test_a_task_directory_with_python_needs_trust_code(tmp_path):
    tasks = _task_dir(tmp_path / "tasks")
    recipe = _recipe(tmp_path / "r.yaml", str(tasks))
    refused = CliRunner().invoke(app, ["validate", str(recipe)])
    assert refused.exit_code == 2, refused.output
    assert "r.yaml:" in refused.output and "stage 'eval': params.include_path.0" in refused.output
    assert "marker_task.py" in refused.output and "--trust-code" in refused.output
    assert CliRunner().invoke(app, ["validate", str(recipe), "--trust-code"]).exit_code == 0


def test_a_function_tag_alone_is_code_and_a_plain_task_directory_is_not(tmp_path):
    """``!function`` can name a Python file anywhere; a directory of plain YAML runs nothing."""
    tagged = _task_dir(tmp_path / "tagged", python=False)
    assert "marker_task.yaml" in EvalStage.runs_code(EvalStage.Params(include_path=[str(tagged)]))["include_path.0"]
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "t.yaml").write_text("task: plain\ninclude: " + str(local_tasks_dir() / "openbookqa_local" / "x.yaml"))
    assert EvalStage.runs_code(EvalStage.Params(include_path=[str(plain), str(tmp_path / "missing")])) == {}


def test_the_bundled_task_directories_are_trusted_as_the_package_is(tmp_path):
    recipe = _recipe(tmp_path / "r.yaml", "${paths.data}/../tasks/openbookqa_local")
    result = CliRunner().invoke(app, ["validate", str(recipe)])
    assert result.exit_code == 0, result.output
    assert any(f.suffix == ".py" for f in (local_tasks_dir() / "openbookqa_local").iterdir())  # it does hold Python


def test_the_task_code_runs_only_with_trust_code(tmp_path, tiny_model_dir):
    tasks = _task_dir(tmp_path / "tasks")
    recipe = _recipe(
        tmp_path / "r.yaml", str(tasks), f"  - type: init\n    params: {{from_pretrained: {tiny_model_dir}}}\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "RECIPE_TRUST_CODE": ""}

    def run(*flags: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "recipe_runner.cli", "run", str(recipe), "--workdir", str(tmp_path / "runs")]
        return subprocess.run([*cmd, *flags], env=env, capture_output=True, text=True, timeout=600)

    refused = run()
    assert refused.returncode == 2 and "--trust-code" in refused.stderr
    assert not (tasks / "ran.txt").exists()
    trusted = run("--trust-code")
    assert trusted.returncode == 0, trusted.stderr[-3000:]
    assert (tasks / "ran.txt").read_text() == "ran"


def test_local_files_are_keyed_by_content(tmp_path, tiny_model_dir):
    """The task directory's files (not Python's byte code), the judge's data file and local models."""
    tasks = _task_dir(tmp_path / "tasks")
    (tasks / "__pycache__").mkdir()
    (tasks / "__pycache__" / "marker_task.cpython-311.pyc").write_bytes(b"written while the stage runs")
    data = tmp_path / "inst.json"
    data.write_text(json.dumps([{"instruction": "Name a colour.", "output": "Blue."}]))
    judge = {"mode": "compare", "data": str(data), "model": str(tiny_model_dir), "baseline_model": "org/hub-model"}
    params = EvalStage.Params(include_path=[str(tasks), str(tmp_path / "missing")], judge=judge)
    assert EvalStage.local_inputs(params) == {
        "include_path.0": tasks / "marker_task.py",
        "include_path.0/marker_task.py": tasks / "marker_task.py",
        "include_path.0/marker_task.yaml": tasks / "marker_task.yaml",
        "judge.data": data,
        "judge.model": tiny_model_dir,
    }
    moved = tmp_path / "elsewhere" / "tasks"
    shutil.copytree(tasks, moved)
    assert set(EvalStage.local_inputs(EvalStage.Params(include_path=[str(moved)]))) == {
        "include_path.0",
        "include_path.0/marker_task.py",
        "include_path.0/marker_task.yaml",
    }
