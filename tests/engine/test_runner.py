"""The runner through the real CLI: caching, selective invalidation, slicing,
the manifest and `recipe status --json`."""

import json


def test_run_then_fully_cached_rerun(run_recipe, status_json, chain, tmp_path):
    wd = tmp_path / "runs"
    proc = run_recipe(chain, wd)
    assert proc.returncode == 0, proc.stderr
    st = status_json(chain, wd)
    assert [s["status"] for s in st["stages"]] == ["done"] * 3
    assert [s["cached"] for s in st["stages"]] == [False] * 3
    total = st["stages"][2]
    assert total["metrics"]["sum"] == 3 * (0 + 1 + 2 + 3)
    assert json.loads((__import__("pathlib").Path(total["artifact"]) / "report.json").read_text())["sum"] == 18
    # third-party stages see their lineage
    assert total["metrics"]["upstream"] and set(total["metrics"]["upstream"]) == {"count", "multiply"}

    proc = run_recipe(chain, wd)
    assert proc.returncode == 0
    st2 = status_json(chain, wd)
    assert [s["cached"] for s in st2["stages"]] == [True] * 3
    assert [s["fingerprint"] for s in st2["stages"]] == [s["fingerprint"] for s in st["stages"]]
    manifest = json.loads((wd / "chain" / "manifest.json").read_text())
    assert manifest["status"] == "done"
    assert manifest["runner_seconds"] < 2.0
    assert "runner overhead" in proc.stdout
    assert manifest["resolved_recipe"]["stages"][1]["params"] == {"factor": 3.0}
    assert "pydantic" in manifest["versions"]


def test_changed_parameter_reruns_only_downstream(run_recipe, recipe_cli, status_json, chain, tmp_path):
    wd = tmp_path / "runs"
    assert run_recipe(chain, wd).returncode == 0
    before = {s["name"]: s for s in status_json(chain, wd)["stages"]}
    plan = recipe_cli("plan", str(chain), "--workdir", str(wd), "--json", "--set", "stages.multiply.params.factor=5")
    reasons = {i["name"]: (i["action"], i["reason"]) for i in json.loads(plan.stdout)}
    assert reasons == {
        "count": ("cached", "cached"),
        "multiply": ("run", "params.factor: 3.0 -> 5.0"),
        "total": ("run", "after multiply (cached if its output is unchanged)"),
    }
    proc = run_recipe(chain, wd, "--set", "stages.multiply.params.factor=5")
    assert proc.returncode == 0, proc.stderr
    after = {s["name"]: s for s in status_json(chain, wd, "--set", "stages.multiply.params.factor=5")["stages"]}
    assert after["count"]["cached"] and after["count"]["fingerprint"] == before["count"]["fingerprint"]
    assert not after["multiply"]["cached"] and after["multiply"]["fingerprint"] != before["multiply"]["fingerprint"]
    assert not after["total"]["cached"] and after["total"]["metrics"]["sum"] == 30
    # the old outputs stay addressable: switching back is a pure cache hit
    proc = run_recipe(chain, wd)
    assert "running [" not in proc.stderr


def test_seed_is_part_of_fingerprint(run_recipe, recipe_cli, chain, tmp_path):
    wd = tmp_path / "runs"
    run_recipe(chain, wd)
    plan = json.loads(recipe_cli("plan", str(chain), "--workdir", str(wd), "--json", "--set", "seed=8").stdout)
    assert [i["action"] for i in plan] == ["run", "run", "run"]


def test_slicing_from_until_only_force_dry_run(run_recipe, status_json, chain, tmp_path):
    wd = tmp_path / "runs"
    proc = run_recipe(chain, wd, "--dry-run")
    assert proc.returncode == 0 and not (wd / "chain" / "stages").exists()
    assert "new" in proc.stdout

    proc = run_recipe(chain, wd, "--until", "multiply")
    assert proc.returncode == 0
    st = {s["name"]: s["status"] for s in status_json(chain, wd)["stages"]}
    assert st == {"count": "done", "multiply": "done", "total": "pending"}

    proc = run_recipe(chain, wd, "--only", "total")
    assert proc.returncode == 0
    assert status_json(chain, wd)["stages"][2]["status"] == "done"

    proc = run_recipe(chain, wd, "--force", "multiply")
    assert "stage multiply (multiply): running [forced]" in proc.stderr
    # the forced stage wrote the same bytes: what depends on it stays cached (early cutoff)
    assert "stage total (total): cached" in proc.stderr
    assert "stage count (count): cached" in proc.stderr

    # --only a stage whose input was never produced is refused before running
    proc = run_recipe(chain, wd, "--only", "total", "--set", "stages.count.params.n=9")
    assert proc.returncode == 2 and "needs the output of 'multiply'" in proc.stderr
    proc = run_recipe(chain, wd, "--from", "nope")
    assert proc.returncode == 2 and "no stage named 'nope'" in proc.stderr


def test_failed_stage_exit_code_and_retry(run_recipe, status_json, write, tmp_path):
    r = write(
        tmp_path / "r.yaml",
        """
        name: fails
        stages:
          - type: count
            params: {n: 5, fail_at: 3}
          - type: total
        """,
    )
    wd = tmp_path / "runs"
    proc = run_recipe(r, wd)
    assert proc.returncode == 1
    assert "planned failure at step 3" in proc.stderr
    st = status_json(r, wd)["stages"]
    assert st[0]["status"] == "failed" and "planned failure" in st[0]["error"]
    assert st[1]["status"] == "pending"
    # the failed stage's checkpoints survive; removing the failure resumes at step 3
    r.write_text(r.read_text().replace("fail_at: 3", "fail_at: null"))
    proc = run_recipe(r, wd)
    assert proc.returncode == 0
    st = status_json(r, wd)["stages"]
    assert st[0]["status"] == "done" and st[1]["metrics"]["sum"] == 10


def test_extends_and_set(run_recipe, recipe_cli, status_json, write, tmp_path):
    write(
        tmp_path / "base.yaml",
        """
        name: base
        seed: 1
        vars: {n: 3, f: 2}
        stages:
          - type: count
            params: {n: "${vars.n}", start: 1}
          - type: multiply
            params: {factor: "${vars.f}"}
          - type: total
        """,
    )
    child = write(
        tmp_path / "team" / "child.yaml",
        """
        extends: ../base.yaml
        name: child
        vars: {f: 10}
        stages:
          - name: count
            type: count
            params: {n: 4}
          - name: double
            type: multiply
            after: count
            params: {factor: 2}
        """,
    )
    proc = recipe_cli("show", str(child), "--set", "stages.total.type=total", "--set", "vars.f=100")
    assert proc.returncode == 0, proc.stderr
    import yaml

    shown = yaml.safe_load(proc.stdout)
    assert shown["name"] == "child" and shown["seed"] == 1
    assert [s["name"] for s in shown["stages"]] == ["count", "double", "multiply", "total"]
    assert shown["stages"][0]["params"] == {"n": 4, "start": 1}  # deep-merged by name
    assert shown["stages"][2]["params"] == {"factor": 100.0}  # --set beats the child's vars
    assert shown["stages"][3]["inputs"] == {"numbers": "multiply.numbers"}
    wd = tmp_path / "runs"
    proc = run_recipe(child, wd, "--set", "vars.f=100")
    assert proc.returncode == 0, proc.stderr
    assert status_json(child, wd, "--set", "vars.f=100")["stages"][3]["metrics"]["sum"] == (1 + 2 + 3 + 4) * 2 * 100
    proc = recipe_cli("validate", str(child), "--set", "stages.cuont.params.n=1")
    assert proc.returncode == 2 and "no stage 'cuont'" in proc.stderr and "did you mean 'count'" in proc.stderr


def test_extends_can_remove_a_base_stage(run_recipe, recipe_cli, status_json, write, tmp_path):
    write(
        tmp_path / "base.yaml",
        """
        name: base
        stages:
          - type: count
            params: {n: 4, start: 1}
          - type: multiply
            params: {factor: 3}
          - type: total
        """,
    )
    child = write(
        tmp_path / "child.yaml",
        """
        extends: base.yaml
        name: child
        stages:
          - {name: multiply, remove: true}
        """,
    )
    import yaml

    proc = recipe_cli("show", str(child))
    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert [s["name"] for s in shown["stages"]] == ["count", "total"]
    assert shown["stages"][1]["inputs"] == {"numbers": "count.numbers"}  # rebound to the latest producer
    wd = tmp_path / "runs"
    proc = run_recipe(child, wd)
    assert proc.returncode == 0, proc.stderr
    assert status_json(child, wd)["stages"][1]["metrics"]["sum"] == 1 + 2 + 3 + 4

    typo = write(
        tmp_path / "typo.yaml",
        """
        extends: base.yaml
        name: typo
        stages:
          - {name: multiplly, remove: true}
        """,
    )
    proc = recipe_cli("validate", str(typo))
    assert proc.returncode == 2 and "remove: no base stage named 'multiplly'" in proc.stderr
    assert "did you mean 'multiply'" in proc.stderr and "typo.yaml:4:5" in proc.stderr
    alone = write(
        tmp_path / "alone.yaml",
        """
        name: alone
        stages:
          - {type: count, params: {n: 2}}
          - {type: total, remove: true}
        """,
    )
    proc = recipe_cli("validate", str(alone))
    assert proc.returncode == 2 and "no base recipe (extends:) has a stage named 'total'" in proc.stderr


def test_explicit_inputs_and_optional_slot(run_recipe, status_json, write, tmp_path):
    r = write(
        tmp_path / "r.yaml",
        """
        name: r
        stages:
          - {type: count, name: a, params: {n: 2}}
          - {type: count, name: b, params: {n: 3, start: 10}}
          - type: total
            inputs: {numbers: a, extra: b.numbers}
        """,
    )
    wd = tmp_path / "runs"
    assert run_recipe(r, wd).returncode == 0
    assert status_json(r, wd)["stages"][2]["metrics"]["sum"] == 0 + 1 + 10 + 11 + 12


def test_extends_null_deletes_an_inherited_key(run_recipe, recipe_cli, status_json, write, tmp_path):
    write(
        tmp_path / "base.yaml",
        """
        name: base
        stages:
          - {type: count, name: a, params: {n: 2}}
          - {type: count, name: b, params: {n: 3, start: 10}}
          - type: total
            inputs: {numbers: a, extra: b.numbers}
        """,
    )
    child = write(
        tmp_path / "child.yaml",
        """
        extends: base.yaml
        name: child
        stages:
          - {name: b, params: {start: null}}
          - {name: total, inputs: {numbers: null, extra: null}}
        """,
    )
    import yaml

    proc = recipe_cli("show", str(child))
    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert shown["stages"][1]["params"] == {"n": 3}  # `start` back to its default
    assert shown["stages"][2]["inputs"] == {"numbers": "b.numbers"}  # rebound to the latest producer; extra unbound
    wd = tmp_path / "runs"
    assert run_recipe(child, wd).returncode == 0
    assert status_json(child, wd)["stages"][2]["metrics"]["sum"] == 0 + 1 + 2
