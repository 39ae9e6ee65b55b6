"""The cache you can trust and share: keys on what (not how or where), outputs
verified before reuse, inputs that change mid-stage refused, and a shared
cache (a directory, or S3 through a real S3 API server on 127.0.0.1) that a
second team's run at another path pulls every stage from."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time


def _stage_lines(stderr: str) -> list[str]:
    return [line.split(" INFO ", 1)[1] for line in stderr.splitlines() if " INFO stage " in line]


def test_verify_and_a_truncated_output_is_rebuilt(recipe_cli, tmp_path, team_checkout):
    recipe, wd = team_checkout(tmp_path / "a"), tmp_path / "runs"
    assert recipe_cli("run", str(recipe), "--workdir", str(wd)).returncode == 0
    proc = recipe_cli("verify", str(recipe), "--workdir", str(wd))
    assert proc.returncode == 0 and "verified 3 stage outputs" in proc.stdout and "all intact" in proc.stdout

    numbers = next((wd / "shared" / "stages").glob("count-*/outputs/numbers/numbers.json"))
    numbers.write_text(numbers.read_text()[:-3])  # truncated
    proc = recipe_cli("verify", str(recipe), "--workdir", str(wd))
    assert proc.returncode == 1 and f"corrupt: {numbers}" in proc.stderr
    plan = json.loads(recipe_cli("plan", str(recipe), "--workdir", str(wd), "--json").stdout)
    assert (
        plan[0]["action"] == "run"
        and "cached output corrupt" in plan[0]["reason"]
        and str(numbers) in plan[0]["reason"]
    )
    proc = recipe_cli("run", str(recipe), "--workdir", str(wd))
    assert proc.returncode == 0, proc.stderr
    lines = _stage_lines(proc.stderr)
    assert any(line.startswith("stage count (count): running [cached output corrupt") for line in lines)
    assert "stage total (total): cached [cached (upstream output unchanged)]" in lines  # same bytes again
    assert recipe_cli("verify", str(recipe), "--workdir", str(wd)).returncode == 0

    # same size, other bytes: only the full digest check sees it
    numbers = next((wd / "shared" / "stages").glob("count-*/outputs/numbers/numbers.json"))
    text = numbers.read_text()
    numbers.write_text(text.replace("3", "4", 1) if "3" in text else text.replace("4", "5", 1))
    proc = recipe_cli("verify", str(recipe), "--workdir", str(wd))
    assert proc.returncode == 1 and "content differs from its digest" in proc.stderr


def test_keys_cover_local_file_content_not_paths_and_not_run_settings(recipe_cli, status_json, tmp_path, team_checkout):
    a, b = team_checkout(tmp_path / "a"), team_checkout(tmp_path / "elsewhere" / "b")
    wd = tmp_path / "runs"
    assert recipe_cli("run", str(a), "--workdir", str(wd)).returncode == 0
    keys_a = [s["fingerprint"] for s in status_json(a, wd)["stages"]]
    keys_b = [s["fingerprint"] for s in status_json(b, wd)["stages"]]
    assert keys_a == keys_b and None not in keys_a  # same content at another path: same keys

    plan = json.loads(
        recipe_cli("plan", str(a), "--workdir", str(wd), "--json", "--set", "stages.count.params.sleep=0.01").stdout
    )
    assert plan[0]["action"] == "cached" and plan[0]["reason"] == "cached (run settings differ)"

    (tmp_path / "a" / "offsets.json").write_text("[1, 3]")  # same size, other content
    plan = json.loads(recipe_cli("plan", str(a), "--workdir", str(wd), "--json").stdout)
    assert plan[0]["action"] == "run" and plan[0]["reason"] == "local input from_file changed"
    os.utime(tmp_path / "a" / "offsets.json", ns=(0, 0))  # an mtime put back does not hide the edit
    plan = json.loads(recipe_cli("plan", str(a), "--workdir", str(wd), "--json").stdout)
    assert plan[0]["action"] == "run"


def test_an_input_edited_while_the_stage_runs_is_not_committed(
    recipe_cli, write, tmp_path, team_checkout, shared_recipe
):
    recipe = team_checkout(tmp_path / "a")
    recipe.write_text(shared_recipe.replace("{n: 4,", "{n: 40, sleep: 0.05,"))
    wd = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "recipe_runner.cli", "run", str(recipe), "--workdir", str(wd)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    (tmp_path / "a" / "offsets.json").write_text("[5, 5, 5]")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "the local input from_file" in err and "changed while the stage ran" in err
    assert not list((wd / "shared" / "stages").glob("count-*"))


def test_a_second_team_pulls_every_stage_from_the_shared_cache(
    recipe_cli, status_json, shared_cache, tmp_path, team_checkout, truncate_cached_count
):
    cache, env = shared_cache
    team_a, team_b = team_checkout(tmp_path / "team-a"), team_checkout(tmp_path / "elsewhere" / "team-b")
    t = time.perf_counter()
    proc = recipe_cli("run", str(team_a), "--workdir", str(tmp_path / "runs-a"), "--cache", cache, env=env)
    first = time.perf_counter() - t
    assert proc.returncode == 0, proc.stderr
    assert f"pushed to the shared cache {cache}: count, multiply, total" in proc.stdout

    # team B: its own copy at another path, its own work dir, other run settings
    env_b = {**env, "RECIPE_CACHE": cache}
    proc = recipe_cli(
        "run", str(team_b), "--workdir", str(tmp_path / "runs-b"), "--set", "stages.count.params.sleep=0.001", env=env_b
    )
    assert proc.returncode == 0, proc.stderr
    lines = _stage_lines(proc.stderr)
    assert not [line for line in lines if "running [" in line], lines
    assert sum("cached [pulled from the shared cache]" in line for line in lines) == 3
    st = status_json(team_b, tmp_path / "runs-b", "--set", "stages.count.params.sleep=0.001")
    assert [s["status"] for s in st["stages"]] == ["done"] * 3
    assert st["stages"][2]["metrics"]["sum"] == 2 * sum(i + 3 for i in range(4))
    assert first > 0

    listed = recipe_cli("cache", "ls", cache, env=env)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 3

    # a truncated file in the shared cache is detected and not used: team C runs the stage itself
    truncate_cached_count(cache, env)
    team_c = team_checkout(tmp_path / "team-c")
    proc = recipe_cli("run", str(team_c), "--workdir", str(tmp_path / "runs-c"), "--cache", cache, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "is corrupt, not used" in proc.stderr
    assert recipe_cli("verify", str(team_c), "--workdir", str(tmp_path / "runs-c")).returncode == 0

    gone = recipe_cli("cache", "gc", cache, "--max-gb", "0", env=env)
    assert gone.returncode == 0 and "removed 3 entries" in gone.stdout


def test_fully_cached_rerun_overhead(recipe_cli, tmp_path, team_checkout):
    recipe, wd = team_checkout(tmp_path / "a"), tmp_path / "runs"
    assert recipe_cli("run", str(recipe), "--workdir", str(wd)).returncode == 0
    proc = recipe_cli("run", str(recipe), "--workdir", str(wd))
    overhead = float(proc.stdout.split("runner overhead: ")[1].split("s")[0])
    assert overhead < 1.0
    shutil.rmtree(wd)
