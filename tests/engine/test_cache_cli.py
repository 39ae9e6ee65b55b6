"""The shared cache seen from `recipe plan`, `recipe status` and `recipe verify`
(--cache, RECIPE_CACHE, `cache:` in the recipe), concurrent pushes of one key,
`recipe cache gc` by age, what `recipe plan` says of an edited or re-versioned
plugin, and the digest cache of local inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

PLUGIN_SRC = Path(__file__).parents[1] / "plugins" / "rr_testplugin" / "rr_testplugin"


def _plan(recipe_cli, recipe: Path, workdir: Path, *extra: str, env: dict | None = None) -> list[dict]:
    proc = recipe_cli("plan", str(recipe), "--workdir", str(workdir), "--json", *extra, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _status(recipe_cli, recipe: Path, workdir: Path, *extra: str, env: dict | None = None) -> list[dict]:
    proc = recipe_cli("status", str(recipe), "--workdir", str(workdir), "--json", *extra, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["stages"]


def test_plan_status_and_verify_see_the_shared_cache(
    recipe_cli, shared_cache, tmp_path, team_checkout, truncate_cached_count
):
    cache, env = shared_cache
    team_a, team_b = team_checkout(tmp_path / "team-a"), team_checkout(tmp_path / "elsewhere" / "team-b")
    proc = recipe_cli("run", str(team_a), "--workdir", str(tmp_path / "runs-a"), "--cache", cache, env=env)
    assert proc.returncode == 0, proc.stderr
    wd = tmp_path / "runs-b"

    alone = _plan(recipe_cli, team_b, wd, env=env)
    assert [i["action"] for i in alone] == ["run"] * 3 and alone[1]["fingerprint"] is None
    plan = _plan(recipe_cli, team_b, wd, "--cache", cache, env=env)
    assert [(i["action"], i["reason"]) for i in plan] == [("cached", "in the shared cache (pulled at run)")] * 3
    # the downstream keys come from the entries' markers: the same keys team A ran under
    keys_a = [s["fingerprint"] for s in _status(recipe_cli, team_a, tmp_path / "runs-a", env=env)]
    assert [i["fingerprint"] for i in plan] == keys_a

    st = _status(recipe_cli, team_b, wd, env={**env, "RECIPE_CACHE": cache})
    assert [(s["status"], s["shared"]) for s in st] == [("pending", True)] * 3
    assert [s["shared"] for s in _status(recipe_cli, team_b, wd, env=env)] == [False, False, False]
    table = recipe_cli("status", str(team_b), "--workdir", str(wd), "--cache", cache, env=env)
    assert table.returncode == 0 and table.stdout.count("in the shared cache") == 3, table.stdout
    assert not (wd / "shared" / "stages").exists()  # plan and status downloaded nothing

    proc = recipe_cli("verify", str(team_b), "--workdir", str(wd), "--cache", cache, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "verified 0 stage outputs and 3 entries of the shared cache" in proc.stdout and "all intact" in proc.stdout
    victim = truncate_cached_count(cache, env)
    proc = recipe_cli("verify", str(team_b), "--workdir", str(wd), "--cache", cache, env=env)
    assert proc.returncode == 1 and f"corrupt: {victim}: " in proc.stderr, proc.stderr
    assert "1 corrupt file(s)" in proc.stdout
    # without the cache, verify looks at the run directory only (empty here): nothing corrupt
    assert recipe_cli("verify", str(team_b), "--workdir", str(wd), env=env).returncode == 0

    # a run does not use the corrupt entry: it runs the stage and pushes a good entry in its place
    proc = recipe_cli("run", str(team_b), "--workdir", str(wd), "--cache", cache, env=env)
    assert proc.returncode == 0 and "is corrupt, not used" in proc.stderr, proc.stderr
    assert "the corrupt entry" in proc.stderr and "was replaced" in proc.stderr
    proc = recipe_cli("verify", str(team_b), "--workdir", str(wd), "--cache", cache, env=env)
    assert proc.returncode == 0 and "verified 3 stage outputs and 3 entries" in proc.stdout, proc.stderr


def test_plan_keys_downstream_from_an_old_marker_or_says_after(recipe_cli, tmp_path, team_checkout):
    """An entry pushed before markers held digests: plan reads its stage.json;
    when that cannot be read either, the stages after it are keyed at run time."""
    cache = tmp_path / "cache"
    team_a = team_checkout(tmp_path / "team-a")
    assert recipe_cli("run", str(team_a), "--workdir", str(tmp_path / "runs-a"), "--cache", str(cache)).returncode == 0
    for marker in cache.glob("*/COMPLETE"):
        data = json.loads(marker.read_text())
        del data["outputs"]
        marker.write_text(json.dumps(data))
    wd = tmp_path / "runs-b"
    plan = _plan(recipe_cli, team_a, wd, "--cache", str(cache))
    assert [i["action"] for i in plan] == ["cached"] * 3 and None not in [i["fingerprint"] for i in plan]

    count_key = plan[0]["fingerprint"]
    for record in (cache / count_key).glob("*/stage.json"):
        record.unlink()
    plan = _plan(recipe_cli, team_a, wd, "--cache", str(cache))
    assert plan[0]["action"] == "cached" and plan[0]["reason"] == "in the shared cache (pulled at run)"
    assert plan[1]["action"] == "run" and plan[1]["reason"].startswith("after count")
    assert plan[1]["fingerprint"] is None


def test_cache_in_the_recipe_is_used_without_the_option(recipe_cli, run_recipe, tmp_path, team_checkout, shared_recipe):
    cache = tmp_path / "recipe-cache"
    recipe = team_checkout(tmp_path / "a", shared_recipe + f"cache: {cache}\n")
    proc = run_recipe(recipe, tmp_path / "runs-a")
    assert proc.returncode == 0, proc.stderr
    assert "pushed to the shared cache" in proc.stdout and "count, multiply, total" in proc.stdout
    assert len(list(cache.glob("*/COMPLETE"))) == 3
    plan = _plan(recipe_cli, recipe, tmp_path / "runs-b")
    assert [i["reason"] for i in plan] == ["in the shared cache (pulled at run)"] * 3
    proc = run_recipe(recipe, tmp_path / "runs-b")
    assert proc.returncode == 0 and proc.stderr.count("cached [pulled from the shared cache]") == 3, proc.stderr


def test_two_runs_push_the_same_keys_at_once(recipe_cli, tmp_path, team_checkout, shared_recipe):
    cache = tmp_path / "cache"
    recipe = team_checkout(tmp_path / "a", shared_recipe.replace("{n: 4,", "{n: 4, sleep: 0.1,"))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "recipe_runner.cli",
                "run",
                str(recipe),
                "--workdir",
                str(tmp_path / f"runs-{i}"),
                "--cache",
                str(cache),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert len(list(cache.glob("*/COMPLETE"))) == 3
    proc = recipe_cli("verify", str(recipe), "--workdir", str(tmp_path / "runs-0"), "--cache", str(cache))
    assert proc.returncode == 0 and "3 entries of the shared cache" in proc.stdout, proc.stdout + proc.stderr


def test_concurrent_pushes_of_one_key_leave_one_complete_entry(
    recipe_cli, shared_cache, tmp_path, monkeypatch, team_checkout
):
    """Both pushers find no entry, upload at the same moment, and publish their markers:
    one complete, verified entry remains, and a reader never sees half a marker."""
    from recipe_runner.planning import Keys, stage_key
    from recipe_runner.recipe import load_recipe
    from recipe_runner.shared_cache import SharedCache
    from recipe_runner.store import RunStore

    cache, env = shared_cache
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    recipe = team_checkout(tmp_path / "a")
    assert recipe_cli("run", str(recipe), "--workdir", str(tmp_path / "runs")).returncode == 0
    r = load_recipe(recipe, [])
    store = RunStore(tmp_path / "runs", r.name)
    key = stage_key(Keys(r, store, store.digest_cache(writable=False)).parts(r.stages[0]))
    assert key is not None and store.committed("count", key) is not None

    shared = SharedCache(cache)
    monkeypatch.setattr(SharedCache, "has", lambda self, key: False)
    both_uploading = threading.Barrier(2, timeout=30)
    put = shared.fs.put

    def racing_put(*args, **kwargs):
        both_uploading.wait()
        return put(*args, **kwargs)

    monkeypatch.setattr(shared.fs, "put", racing_put)
    errors: list[BaseException] = []
    seen: list[object] = []
    done = threading.Event()

    def push() -> None:
        try:
            shared.push(store, "count", key)
        except BaseException as e:  # reported below
            errors.append(e)

    def read() -> None:
        while not done.is_set():
            seen.append(shared.marker(key))

    pushers = [threading.Thread(target=push) for _ in range(2)]
    reader = threading.Thread(target=read)
    for t in [reader, *pushers]:
        t.start()
    for t in pushers:
        t.join(timeout=60)
    done.set()
    reader.join(timeout=10)
    assert not errors, errors
    assert all(m is None or m["upload"] for m in seen)  # no partial marker read
    entries = shared.entries()
    assert [e["key"] for e in entries] == [key] and entries[0]["outputs"] == RunStore.output_digests(
        store.committed("count", key) or {}
    )
    shared.fs.invalidate_cache()
    uploads = [p for p in shared.fs.ls(f"{shared.root}/{key}", detail=False) if not p.endswith("COMPLETE")]
    assert len(uploads) == 2  # both pushed: each its own upload, one marker
    assert shared.verify(key) == []
    fresh = RunStore(tmp_path / "runs-pulled", r.name)
    assert shared.pull(fresh, "count", key) and fresh.committed("count", key) is not None


def test_cache_gc_by_age_removes_only_old_entries(recipe_cli, tmp_path, team_checkout):
    cache = tmp_path / "cache"
    recipe = team_checkout(tmp_path / "a")
    assert recipe_cli("run", str(recipe), "--workdir", str(tmp_path / "runs"), "--cache", str(cache)).returncode == 0
    markers = sorted(cache.glob("*/COMPLETE"))
    assert len(markers) == 3
    old = next(m for m in markers if json.loads(m.read_text())["stage"] == "count")
    data = json.loads(old.read_text())
    data["pushed"] = time.time() - 10 * 86400
    old.write_text(json.dumps(data))

    proc = recipe_cli("cache", "gc", str(cache), "--older-than-days", "30")
    assert proc.returncode == 0 and "removed 0 entries" in proc.stdout
    proc = recipe_cli("cache", "gc", str(cache), "--older-than-days", "5")
    assert proc.returncode == 0 and "removed 1 entries" in proc.stdout, proc.stdout
    assert not old.parent.exists()
    assert sorted(cache.glob("*/COMPLETE")) == [m for m in markers if m != old]
    listed = recipe_cli("cache", "ls", str(cache))
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 2 and "count" not in listed.stdout


def test_plan_names_an_edited_plugin_source_and_a_plugin_version_change(recipe_cli, tmp_path, team_checkout):
    """A development copy of the test plugin, first on PYTHONPATH: editing its
    source, then its version, re-keys its stages and `recipe plan` says why."""
    pkgs = tmp_path / "pkgs"
    shutil.copytree(PLUGIN_SRC, pkgs / "rr_testplugin", ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PYTHONPATH": os.pathsep.join([str(pkgs), os.environ.get("PYTHONPATH", "")])}
    recipe, wd = team_checkout(tmp_path / "a"), tmp_path / "runs"
    assert recipe_cli("run", str(recipe), "--workdir", str(wd), env=env).returncode == 0
    assert [i["action"] for i in _plan(recipe_cli, recipe, wd, env=env)] == ["cached"] * 3

    init = pkgs / "rr_testplugin" / "__init__.py"
    init.write_text(init.read_text() + "\n# an edit\n")
    plan = _plan(recipe_cli, recipe, wd, env=env)
    assert [(i["action"], i["reason"]) for i in plan[:1]] == [("run", "plugin source edited")]
    assert plan[1]["reason"].startswith("after count")

    init.write_text(init.read_text().replace('name = "count"\n    version = "1"', 'name = "count"\n    version = "2"'))
    plan = _plan(recipe_cli, recipe, wd, env=env)
    assert plan[0]["action"] == "run" and plan[0]["reason"] == "plugin count 1 -> count 2; plugin source edited"


def test_describe_change_names_plugin_version_and_source():
    from recipe_runner.keys import describe_change

    before = {
        "plugin": "count",
        "version": "1",
        "source": "aa",
        "params": {},
        "local": {},
        "inputs": {},
        "seed": 1,
        "extra": None,
    }
    assert describe_change(before, dict(before, source="bb")) == ["plugin source edited"]
    assert describe_change(before, dict(before, version="2")) == ["plugin count 1 -> count 2"]
    assert describe_change(before, dict(before, source=None)) == ["plugin source edited"]  # now a normal install
    assert describe_change(before, dict(before)) == []


def test_digest_cache_skips_unchanged_inputs_and_sees_an_edit_that_restores_mtime(
    run_recipe, tmp_path, team_checkout, shared_recipe
):
    from recipe_runner.planning import plan
    from recipe_runner.recipe import load_recipe
    from recipe_runner.store import RunStore

    recipe = team_checkout(tmp_path / "a", shared_recipe.replace("{n: 4,", "{n: 1,"))
    big = tmp_path / "a" / "offsets.json"
    big.write_text(json.dumps([7] * 400_000))  # 2.8 MB
    wd = tmp_path / "runs"
    assert run_recipe(recipe, wd).returncode == 0
    r = load_recipe(recipe, [])
    store = RunStore(wd, r.name)

    cache = store.digest_cache(writable=False)
    assert [i.action for i in plan(r, store, cache=cache)] == ["cached"] * 3
    assert cache.misses == 0 and cache.hits >= 1  # the input's digest came from .digests.json

    st = big.stat()
    big.write_text(json.dumps([8] + [7] * 399_999))  # same size, other bytes
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))  # the mtime put back
    assert big.stat().st_size == st.st_size and big.stat().st_mtime_ns == st.st_mtime_ns
    cache = store.digest_cache(writable=False)
    items = plan(r, store, cache=cache)
    assert (items[0].action, items[0].reason) == ("run", "local input from_file changed")
    assert cache.misses == 1  # re-hashed: its ctime changed
