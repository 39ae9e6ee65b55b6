"""CLI surface: fast start without torch, stage listing, schema kept current,
scaffolding a third-party plugin, bundled examples."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

NO_HEAVY = ("torch", "transformers", "datasets", "trl", "peft", "accelerate", "lm_eval", "ray")


def test_help_and_validate_do_not_import_heavy_libraries(cli_imports):
    mods = cli_imports(["--help"]).modules
    assert "recipe_runner" in mods and not mods & set(NO_HEAVY), mods & set(NO_HEAVY)
    for recipe in sorted((ROOT / "recipes").glob("*.yaml")):
        run = cli_imports(["validate", str(recipe)])
        assert run.exit_code == 0 and not run.modules & set(NO_HEAVY), (recipe.name, run.modules & set(NO_HEAVY))


def test_bundled_recipes_validate_offline(recipe_cli):
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    for recipe in recipes:
        proc = recipe_cli("validate", str(recipe))
        assert proc.returncode == 0, (recipe.name, proc.stderr)


def test_stages_lists_plugins_and_parameters(recipe_cli):
    proc = recipe_cli("stages")
    assert proc.returncode == 0
    assert "count" in proc.stdout and "rr-testplugin 0.1.0" in proc.stdout
    assert "failed to import" in proc.stdout  # the broken test plugin is shown, not fatal
    proc = recipe_cli("stages", "count", env={"COLUMNS": "250"})
    assert proc.returncode == 0
    assert "sleep" in proc.stdout and "seconds per step" in proc.stdout and "0.0" in proc.stdout
    proc = recipe_cli("stages", "cuont")
    assert proc.returncode == 2 and "did you mean 'count'" in proc.stderr


def test_bundled_recipes_are_valid_under_the_committed_schema():
    """What an editor checks with schemas/recipe.schema.json: every bundled
    recipe (with its ${vars...} references) passes; typos and wrong types do not."""
    import jsonschema
    import yaml

    schema = json.loads((ROOT / "schemas" / "recipe.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert len(recipes) >= 8
    for f in recipes:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(f.read_text()))]
        assert not errors, f"{f.name}: {errors[:3]}"
    good = {
        "name": "x",
        "extends": "base.yaml",
        "stages": [
            {"name": "dedup", "remove": True},
            {"type": "pack", "after": "tokenize", "params": {"max_seq_length": "${vars.seq_len}", "mode": "document"}},
        ],
    }
    assert not list(validator.iter_errors(good))
    for bad_params in ({"max_seq_length": "long"}, {"max_seq_lenght": 128}, {"mode": "zigzag"}):
        bad = {"name": "x", "stages": [{"type": "pack", "params": bad_params}]}
        assert list(validator.iter_errors(bad)), bad_params
    assert list(validator.iter_errors({"name": "x", "stages": [{"type": "no_such_stage"}]}))


def test_committed_schema_and_stage_docs_are_current():
    from recipe_runner.docs import recipe_json_schema, stages_markdown
    from recipe_runner.registry import Registry

    builtin = Registry(distribution="recipe-runner")
    committed = json.loads((ROOT / "schemas" / "recipe.schema.json").read_text())
    assert committed == json.loads(json.dumps(recipe_json_schema(builtin))), (
        "schemas/recipe.schema.json is stale: run `python -m recipe_runner.docs`"
    )
    assert (ROOT / "docs" / "stages.md").read_text() == stages_markdown(builtin), (
        "docs/stages.md is stale: run `python -m recipe_runner.docs`"
    )


def test_schema_command_covers_plugin_params(recipe_cli):
    schema = json.loads(recipe_cli("schema", check=True).stdout)
    entries = schema["else"]["properties"]["stages"]["items"]["oneOf"]  # a standalone recipe's stages
    variants = {v["properties"]["type"]["const"]: v for v in entries if "type" in v["properties"]}
    assert [v["title"] for v in entries if "type" not in v["properties"]] == ["removal of a base stage"]
    assert "count" in variants
    params = set(variants["count"]["properties"]["params"]["properties"])
    assert params == {"n", "start", "sleep", "fail_at", "hook", "from_file"}
    assert variants["count"]["properties"]["params"]["additionalProperties"] is False


def test_new_stage_scaffold_installs_and_runs(recipe_cli, tmp_path):
    proc = recipe_cli("new-stage", "min_chars", "--dir", str(tmp_path), check=True)
    root = tmp_path / "recipe-stage-min-chars"
    assert (root / "pyproject.toml").exists() and "created" in proc.stdout
    site = tmp_path / "site"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(root),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pip.returncode == 0, pip.stderr
    env = {"PYTHONPATH": str(site) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = recipe_cli("stages", "min_chars", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "recipe-stage-min-chars 0.1.0" in proc.stdout and "min_chars" in proc.stdout
    test = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
        env=dict(os.environ, **env),
    )
    assert test.returncode == 0, test.stdout + test.stderr
    assert "1 passed" in test.stdout


def test_ls_and_cp_bundled_examples(recipe_cli, tmp_path):
    out = recipe_cli("ls", check=True).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert names == sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
    if not names:
        pytest.skip("no example recipes yet")
    recipe_cli("cp", names[0], str(tmp_path), check=True)
    copied = tmp_path / f"{names[0]}.yaml"
    assert copied.read_text() == (ROOT / "recipes" / f"{names[0]}.yaml").read_text()
    assert recipe_cli("validate", str(copied)).returncode == 0
    assert recipe_cli("cp", names[0], str(tmp_path)).returncode == 2  # never overwrites
    assert recipe_cli("cp", "nope", str(tmp_path)).returncode == 2


def test_run_by_example_name_is_resolved(recipe_cli, write, tmp_path):
    write(tmp_path / "x.yaml", "name: x\nstages:\n  - type: count\n")
    # a path wins over an example name; a bare unknown name is a clear error
    assert recipe_cli("validate", str(tmp_path / "x.yaml")).returncode == 0
    proc = recipe_cli("validate", "no_such_example")
    assert proc.returncode == 2 and "recipe file not found" in proc.stderr
