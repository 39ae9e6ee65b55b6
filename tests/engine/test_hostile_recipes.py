"""A corpus of broken, odd and hostile recipes: each is refused through the
real CLI with exit code 2, a located message and no traceback, quickly, and
nothing is run or committed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

CHAIN = """
stages:
  - {type: count, params: {n: 2}}
  - {type: total}
"""


def _billion_laughs() -> str:
    text = 'name: lol\nvars:\n  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    prev = "a"
    for name in "bcdefghi":
        text += f"  {name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]\n"
        prev = name
    return text + CHAIN


# (id, recipe text, message fragment): `recipe validate` must exit 2 naming the problem
CASES = [
    ("billion-laughs", _billion_laughs(), "expands to more than 100,000 values"),
    ("deep-nesting", "name: deep\nvars: {x: " + "[" * 3000 + "]" * 3000 + "}\n" + CHAIN, "nesting deeper than 64"),
    ("huge-file", "name: big\nvars: {x: '" + "a" * (1 << 20) + "'}\n" + CHAIN, "limited to 1 MiB"),
    ("var-self-reference", "name: v\nvars: {a: '${vars.a}'}\n" + CHAIN, "refers to itself (vars.a -> vars.a)"),
    (
        "var-cycle",
        "name: v\nvars: {a: '${vars.b}', b: '${vars.a}'}\n" + CHAIN,
        "refers to itself (vars.a -> vars.b -> vars.a)",
    ),
    ("var-self-in-string", "name: v\nvars: {a: 'x${vars.a}'}\n" + CHAIN, "refers to itself"),
    ("undefined-var", "name: v\nvars: {a: '${vars.nope}'}\n" + CHAIN, "'${vars.nope}' is not defined"),
    ("undefined-env", "name: v\nvars: {a: '${env.RR_TEST_SURELY_UNSET}'}\n" + CHAIN, "no environment variable"),
    ("unknown-scope", "name: v\nvars: {a: '${vras.b}'}\n" + CHAIN, "unknown reference '${vras.b}'"),
    ("extends-number", "name: e\nextends: 5\n" + CHAIN, "extends: must be a recipe path"),
    ("extends-missing", "name: e\nextends: nowhere.yaml\n" + CHAIN, "base recipe not found"),
    ("extends-directory", "name: e\nextends: adir\n" + CHAIN, "is not a recipe file"),
    ("name-too-long", f"name: {'n' * 300}\n" + CHAIN, "at most 100 long"),
    ("name-trailing-newline", 'name: "abc\\n"\n' + CHAIN, "must start with a letter or digit"),
    ("name-with-separator", "name: a/b\n" + CHAIN, "must start with a letter or digit"),
    ("name-dot-dot", "name: ..\n" + CHAIN, "must start with a letter or digit"),
    ("stage-name-control-char", 'name: s\nstages:\n  - {type: count, name: "a\\tb"}\n', "stage name 'a\\tb'"),
    ("after-without-extends", "name: a\nstages:\n  - {type: count, after: x}\n", "this recipe has no extends:"),
    ("before-without-extends", "name: a\nstages:\n  - {type: count, before: x}\n", "this recipe has no extends:"),
    ("duplicate-key", "name: d\nname: e\n" + CHAIN, "duplicate key 'name'"),
    ("mapping-key", "name: d\n? [a, b]\n: 1\n" + CHAIN, "must be a plain value"),
    ("seed-huge", "name: s\nseed: 1.0e+35\n" + CHAIN, "seed"),
    ("seed-negative", "name: s\nseed: -1\n" + CHAIN, "seed"),
    ("seed-string", "name: s\nseed: abc\n" + CHAIN, "seed"),
    ("yaml-python-tag", "name: t\nvars: {x: !!python/object/apply:os.system [echo hi]}\n" + CHAIN, "YAML tags"),
    ("empty-file", "", "must be a YAML mapping"),
    ("top-level-list", "- a\n- b\n", "must be a YAML mapping"),
    ("stages-not-a-list", "name: x\nstages: {type: count}\n", "stages"),
    ("stage-not-a-mapping", "name: x\nstages: [count]\n", "stages[0]"),
    ("two-documents", "name: x\n---\nname: y\n", "found another document"),
    ("tab-indentation", "name: x\nstages:\n\t- {type: count}\n", "found character '\\t'"),
    ("unknown-stage-type", "name: x\nstages: [{type: cuont}]\n", "did you mean 'count'"),
    ("negative-count", "name: x\nstages: [{type: count, params: {n: -3}}]\n", "greater than or equal to 0"),
    ("remove-without-extends", "name: x\nstages: [{type: count}, {name: total, remove: true}]\n", "no base recipe"),
]


@pytest.mark.parametrize("text,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_broken_recipe_is_refused_cleanly(recipe_cli, tmp_path, text, fragment):
    (tmp_path / "adir").mkdir()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    t = time.perf_counter()
    proc = recipe_cli("validate", str(recipe))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert fragment in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert time.perf_counter() - t < 10
    run = recipe_cli("run", str(recipe), "--workdir", str(tmp_path / "runs"))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert not any((tmp_path / "runs").rglob("stage.json"))


def test_yaml_merge_key_is_accepted_and_own_keys_override(recipe_cli, tmp_path):
    recipe = tmp_path / "m.yaml"
    recipe.write_text(
        "name: m\nvars:\n  common: &common {type: count, params: {n: 2}}\nstages:\n"
        "  - <<: *common\n    name: first\n  - <<: *common\n    name: second\n    params: {n: 5}\n"
        "  - {type: total, inputs: {numbers: second}}\n"
    )
    proc = recipe_cli("show", str(recipe))
    assert proc.returncode == 0, proc.stderr
    assert "name: first" in proc.stdout and "n: 5" in proc.stdout


def test_recipe_path_that_is_a_directory(recipe_cli, tmp_path):
    proc = recipe_cli("validate", str(tmp_path))
    assert proc.returncode == 2 and "is a directory" in proc.stderr and "Traceback" not in proc.stderr


def test_workdir_that_cannot_be_written(recipe_cli, write, tmp_path):
    recipe = write(tmp_path / "r.yaml", "name: r\n" + CHAIN)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the work dir should be")
    for command in ("run", "status", "plan"):
        proc = recipe_cli(command, str(recipe), "--workdir", str(blocker))
        assert proc.returncode in (0, 2), proc.stderr
        assert "Traceback" not in proc.stderr
    proc = recipe_cli("run", str(recipe), "--workdir", str(blocker))
    assert proc.returncode == 2 and "error:" in proc.stderr


def test_stage_failure_reads_like_a_tool_and_keeps_the_traceback_in_the_log(recipe_cli, write, tmp_path):
    recipe = write(tmp_path / "f.yaml", "name: f\nstages:\n  - {type: count, params: {n: 3, fail_at: 1}}\n")
    wd = tmp_path / "runs"
    proc = recipe_cli("run", str(recipe), "--workdir", str(wd))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "stage 'count' failed: planned failure at step 1" in proc.stderr
    log = wd / "f" / "logs" / "count.log"
    assert f"the full traceback is in {log}" in proc.stderr
    assert "Traceback (most recent call last)" in log.read_text()
    verbose = recipe_cli("run", str(recipe), "--workdir", str(wd), "-v")
    assert verbose.returncode == 1 and "Traceback (most recent call last)" in verbose.stderr


def test_secrets_from_the_environment_are_redacted(recipe_cli, write, tmp_path):
    secret = "sk-test-1234567890abcdef"
    recipe = write(
        tmp_path / "s.yaml",
        """
        name: s
        stages:
          - {type: count, params: {n: 2}}
          - {type: total, params: {label: "key=${env.RR_TEST_API_KEY}"}}
        """,
    )
    env = {"RR_TEST_API_KEY": secret}
    shown = recipe_cli("show", str(recipe), env=env)
    assert shown.returncode == 0 and secret not in shown.stdout and "key=***" in shown.stdout
    wd = tmp_path / "runs"
    proc = recipe_cli("run", str(recipe), "--workdir", str(wd), "-v", env=env)
    assert proc.returncode == 0, proc.stderr
    assert secret not in proc.stdout + proc.stderr
    written = [p for p in (wd / "s").rglob("*") if p.is_file() and p.name != "report.json"]
    assert written and not [p for p in written if secret in p.read_text(errors="replace")]
    reports = list((wd / "s").rglob("report.json"))
    assert reports and secret in reports[0].read_text()  # the stage itself still got the value

    listed = write(
        tmp_path / "l.yaml",
        """
        name: l
        secrets: [RR_TEST_PLAIN]
        stages:
          - {type: count, params: {n: 2}}
          - {type: total, params: {label: "${env.RR_TEST_PLAIN}"}}
        """,
    )
    shown = recipe_cli("show", str(listed), env={"RR_TEST_PLAIN": "hunter2hunter2"})
    assert shown.returncode == 0 and "hunter2hunter2" not in shown.stdout


def test_hostile_recipe_is_refused_fast(recipe_cli, tmp_path: Path):
    recipe = tmp_path / "lol.yaml"
    recipe.write_text(_billion_laughs())
    from recipe_runner.errors import RecipeError
    from recipe_runner.located_yaml import load_located

    t = time.perf_counter()
    with pytest.raises(RecipeError, match="expands to more than"):
        load_located(recipe)
    assert time.perf_counter() - t < 0.5


def test_removing_a_stage_others_name_is_one_error_with_the_fix(recipe_cli, write, tmp_path):
    write(
        tmp_path / "base.yaml",
        """
        name: base
        stages:
          - {type: count, name: a, params: {n: 2}}
          - {type: count, name: b, params: {n: 3}}
          - {type: total, name: t1, inputs: {numbers: a, extra: b}}
          - {type: total, name: t2, inputs: {numbers: a, extra: b.numbers}}
        """,
    )
    child = write(
        tmp_path / "child.yaml",
        """
        extends: base.yaml
        name: child
        stages:
          - {name: b, remove: true}
        """,
    )
    proc = recipe_cli("validate", str(child))
    assert proc.returncode == 2 and proc.stderr.count("\n  ") == 1, proc.stderr
    assert "stage 'b' is removed, but 't1' (inputs.extra), 't2' (inputs.extra) still name it" in proc.stderr
    assert "child.yaml:4:5" in proc.stderr and "{name: t1, inputs: {extra: null}}" in proc.stderr
    fixed = write(
        tmp_path / "fixed.yaml",
        """
        extends: base.yaml
        name: fixed
        stages:
          - {name: b, remove: true}
          - {name: t1, inputs: {extra: null}}
          - {name: t2, inputs: {extra: null}}
        """,
    )
    proc = recipe_cli("validate", str(fixed))
    assert proc.returncode == 0, proc.stderr


def test_code_named_by_a_recipe_runs_only_with_trust_code(recipe_cli, write, tmp_path):
    marker = tmp_path / "hook-ran"
    hook = write(tmp_path / "hook.py", f"open({str(marker)!r}, 'w').write('ran')\n")
    write(tmp_path / "base.yaml", f"name: base\ndefaults: {{hook: {hook}}}\nstages:\n  - {{type: count}}\n")
    child = write(tmp_path / "child.yaml", "extends: base.yaml\nname: child\n")  # set in a shared base
    wd = tmp_path / "runs"
    for command in (["validate", str(child)], ["run", str(child), "--workdir", str(wd)]):
        proc = recipe_cli(*command)
        assert proc.returncode == 2, proc.stderr
        assert f"stage 'count': params.hook: runs the Python file {hook}" in proc.stderr
        assert "--trust-code" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()
    assert recipe_cli("validate", str(child), "--trust-code").returncode == 0
    proc = recipe_cli("run", str(child), "--workdir", str(wd), env={"RECIPE_TRUST_CODE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert marker.read_text() == "ran"
