"""Recipe validation: every problem reported at once, with file:line:col,
stage, field path and a did-you-mean; exit code 2 and nothing run."""


def test_misspelled_key_deep_inside_stage(recipe_cli, write, tmp_path):
    r = write(
        tmp_path / "bad.yaml",
        """
        name: bad
        stages:
          - type: count
            params:
              n: 3
          - type: multiply
            name: triple
            params:
              factr: 3
        """,
    )
    proc = recipe_cli("validate", str(r))
    assert proc.returncode == 2
    assert (
        f"{r}:9:7: stage 'triple': stages[1].params.factr: unknown key 'factr' (did you mean 'factor'?)" in proc.stderr
    )
    assert not (tmp_path / "runs").exists()


def test_all_problems_reported_together(recipe_cli, write, tmp_path):
    r = write(
        tmp_path / "bad.yaml",
        """
        name: bad
        sead: 1
        stages:
          - type: cuont
          - type: multiply
            params: {factor: not-a-number}
          - type: total
            inputs: {numbers: nowhere}
        """,
    )
    proc = recipe_cli("validate", str(r))
    assert proc.returncode == 2
    err = proc.stderr
    assert "4 problems in recipe" in err
    assert f"{r}:2:1: sead: unknown key 'sead' (did you mean 'seed'?)" in err
    assert f"{r}:4:5: stage 'cuont': stages[0].type: unknown stage type 'cuont' (did you mean 'count'?)" in err
    assert f"{r}:6:14: stage 'multiply': stages[1].params.factor: Input should be a valid number" in err
    assert (
        f"{r}:8:14: stage 'total': stages[2].inputs.numbers: input names stage 'nowhere', which does not exist" in err
    )


def test_missing_input_and_kind_mismatch(recipe_cli, write, tmp_path):
    r = write(
        tmp_path / "r.yaml",
        """
        name: r
        stages:
          - type: total
          - type: count
          - type: multiply
            inputs: {numbers: total}
        """,
    )
    err = recipe_cli("validate", str(r)).stderr
    assert "stage 'total'" in err and "needs an input 'numbers' (numbers) but no earlier stage produces one" in err
    assert "stage 'multiply'" in err and "stage 'total' produces report, but this input takes numbers" in err


def test_cross_stage_check_from_plugin(recipe_cli, write, tmp_path):
    r = write(
        tmp_path / "r.yaml",
        """
        name: r
        stages:
          - type: count
            params: {n: 10}
          - type: total
            params: {max_length: 5}
        """,
    )
    proc = recipe_cli("validate", str(r))
    assert proc.returncode == 2
    assert "upstream 'count' counts 10 numbers, more than max_length 5" in proc.stderr


def test_yaml_tags_and_code_are_refused(recipe_cli, write, tmp_path):
    r = write(
        tmp_path / "r.yaml",
        """
        name: r
        stages:
          - type: count
            params: {n: !!python/object/apply:os.system ["echo pwned"]}
        """,
    )
    proc = recipe_cli("validate", str(r))
    assert proc.returncode == 2
    assert "YAML tags are not allowed" in proc.stderr and ":4:" in proc.stderr
    assert "pwned" not in proc.stdout


def test_duplicate_names_unknown_var_and_default(recipe_cli, write, tmp_path):
    r = write(
        tmp_path / "r.yaml",
        """
        name: r
        defaults: {sleeep: 0}
        stages:
          - type: count
            params: {n: "${vars.m}"}
          - type: count
        """,
    )
    err = recipe_cli("validate", str(r)).stderr
    assert "'${vars.m}' is not defined" in err
    r.write_text(r.read_text().replace('"${vars.m}"', "2"))
    err = recipe_cli("validate", str(r)).stderr
    assert "two stages are named 'count'" in err
    assert "default 'sleeep' is not a parameter of any stage in this recipe (did you mean 'sleep'?)" in err


def test_missing_file_and_broken_yaml(recipe_cli, write, tmp_path):
    proc = recipe_cli("validate", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and "recipe file not found" in proc.stderr
    r = write(tmp_path / "r.yaml", "name: r\nstages:\n  - type: count\n   params: {}\n")
    proc = recipe_cli("validate", str(r))
    assert proc.returncode == 2 and f"{r}:4:" in proc.stderr


def test_broken_and_duplicate_plugins_name_their_distribution():
    from recipe_runner.registry import PluginError, Registry

    reg = Registry()
    try:
        reg.load("broken")
        raise AssertionError("broken plugin loaded")
    except PluginError as e:
        assert "rr-testplugin 0.1.0" in str(e) and "failed to import" in str(e)
    dup = Registry(group="recipe_runner.test_dup")
    try:
        dup.load("count")
        raise AssertionError("duplicate registration accepted")
    except PluginError as e:
        assert "rr-testplugin 0.1.0" in str(e) and "rr-testplugin-dup 0.1.0" in str(e)
    # a broken plugin does not break recipes that do not use it
    assert "count" in reg.names() and reg.load("count").name == "count"


def test_recipe_using_broken_plugin(recipe_cli, write, tmp_path):
    r = write(tmp_path / "r.yaml", "name: r\nstages:\n  - type: broken\n")
    proc = recipe_cli("validate", str(r))
    assert proc.returncode == 2 and "rr-testplugin 0.1.0" in proc.stderr and "failed to import" in proc.stderr
