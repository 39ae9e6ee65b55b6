"""`recipe report` on the command line: a recipe's report, a comparison of
two run directories, usage errors, and no torch imported on the way."""

from __future__ import annotations

import subprocess
import sys

from recipe_runner.recipe import load_recipe

NO_HEAVY = ("torch", "transformers", "datasets", "trl", "peft", "accelerate", "lm_eval")


def test_report_of_a_recipe(tiny_run, run_recipe_cli, tmp_path):
    out = tmp_path / "tiny.html"
    proc = run_recipe_cli("report", str(tiny_run.recipe), "--workdir", str(tiny_run.workdir), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<title>report-tiny: recipe report</title>" in html
    for stage in load_recipe(tiny_run.recipe).stages:
        assert f'data-stage="{stage.name}"' in html


def test_report_marks_what_set_overrides_change(tiny_run, run_recipe_cli, tmp_path):
    """The report shows what the run built; --set (like an edited recipe) marks
    the stages it re-keys, the ones `recipe run` would build again."""
    out = tmp_path / "changed.html"
    args = ("--workdir", str(tiny_run.workdir), "-o", str(out), "--set", "stages.pretrain.params.max_steps=7")
    proc = run_recipe_cli("report", str(tiny_run.recipe), *args)
    assert proc.returncode == 0, proc.stderr
    html = out.read_text()
    for stage in ("pretrain", "eval"):
        assert f'<g class="node done changed" data-stage="{stage}">' in html
    for stage in ("source", "filter", "tokenize", "pack", "init"):
        assert f'<g class="node done" data-stage="{stage}">' in html
    assert "since this run (`recipe run` rebuilds them): pretrain, eval</p>" in html
    assert html.count("changed in the recipe since this run</span>") == 2  # the timeline's why column


def test_compare_two_run_directories(tiny_run, second_run, run_recipe_cli, tmp_path):
    out = tmp_path / "compare.html"
    proc = run_recipe_cli("report", "--compare", str(tiny_run.run_dir), str(second_run.run_dir), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    html = out.read_text()
    assert 'id="lineage-0"' in html and 'id="lineage-1"' in html  # one graph per run
    assert "Recipe differences" in html and "params.learning_rate" in html


def test_usage_errors_exit_2(tiny_run, run_recipe_cli, tmp_path):
    neither = run_recipe_cli("report", "-o", str(tmp_path / "x.html"))
    both = run_recipe_cli("report", str(tiny_run.recipe), "--compare", "a", "b", "-o", str(tmp_path / "x.html"))
    not_a_run = run_recipe_cli("report", str(tmp_path), "-o", str(tmp_path / "x.html"))
    for proc in (neither, both, not_a_run):
        assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--compare RUN_A RUN_B" in neither.stderr
    assert "no manifest.json" in not_a_run.stderr
    assert not (tmp_path / "x.html").exists()


def test_report_does_not_import_torch(tiny_run, tmp_path):
    out = tmp_path / "light.html"
    code = (
        "import sys; from recipe_runner.cli import app\n"
        f"try:\n    app(['report', {str(tiny_run.run_dir)!r}, '-o', {str(out)!r}])\nexcept SystemExit:\n    pass\n"
        "print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.is_file(), proc.stderr
    loaded = set(proc.stdout.strip().splitlines()[-1].split())
    assert not loaded & set(NO_HEAVY), loaded & set(NO_HEAVY)
