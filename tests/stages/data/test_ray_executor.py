"""The data stages on Ray (``executor: {type: ray}``), against a real local
Ray instance started by the test: the bundled recipe through `recipe run`
writes the bytes of the local run under the same keys, shards finished by
one executor are reused by the other, and without Ray the error says how
to install it."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from recipe_runner import StageError
from recipe_runner.testing import run_stage
from recipe_runner_stages.data.filter.stage import FilterStage
from recipe_runner_stages.data.params import RayExecutor
from recipe_runner_stages.data.shard_store import ShardStore
from recipe_runner_stages.data.shards import ShardPlan
from recipe_runner_stages.data.workers import map_shards

RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "clean_and_pack.yaml"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
ON_RAY = ("--set", "defaults.executor.type=ray")


def digests(path: Path) -> dict[str, str]:
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file()
    }


def stages_of(workdir: Path) -> dict[str, dict]:
    manifest = json.loads((workdir / "clean-and-pack" / "manifest.json").read_text())
    return {s["name"]: s for s in manifest["stages"]}


def outputs_of(stage: dict) -> dict[str, Path]:
    a = stage["artifact"]
    return {k: Path(v) for k, v in a.items()} if isinstance(a, dict) else {"dataset": Path(a)}


def shard_tasks_run(ray) -> int:
    """Shard tasks the Ray instance has executed so far (any driver)."""
    names = ("ray_executor._shard_task", "ray_executor._writer_task")  # map_shards' and source's
    return sum(1 for e in ray.timeline() if str(e.get("name", "")).endswith(names))


def shard_tasks_since(ray, before: int, expected: int) -> int:
    """Shard tasks run since ``before`` (task events reach Ray's GCS within a second or so)."""
    for _ in range(20):
        if shard_tasks_run(ray) - before >= expected:
            break
        time.sleep(0.5)
    return shard_tasks_run(ray) - before


@pytest.mark.slow
def test_clean_and_pack_on_ray_writes_the_bytes_of_the_local_run(tmp_path, local_ray, recipe_cli):
    """The issue's "done when": `recipe run recipes/clean_and_pack.yaml --set
    defaults.executor.type=ray` gives the local run's packed rows, byte for
    byte, under the same stage keys, and its shards did run as Ray tasks."""
    import ray

    local = recipe_cli("run", str(RECIPE), "--workdir", str(tmp_path / "local"), env=OFFLINE)
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    # the executor changes how, not what: the local run's stages are the ones a ray run would make
    status = {
        how: recipe_cli("status", str(RECIPE), "--workdir", str(tmp_path / "local"), "--json", *how, env=OFFLINE)
        for how in ((), ON_RAY)
    }
    plans = {how: json.loads(proc.stdout)["stages"] for how, proc in status.items()}
    assert plans[()] == plans[ON_RAY]
    assert {s["status"] for s in plans[ON_RAY]} == {"done"}, plans[ON_RAY]

    before = shard_tasks_run(ray)
    env = {**OFFLINE, "RAY_ADDRESS": local_ray}  # address null: $RAY_ADDRESS, the test's instance
    on_ray = recipe_cli("run", str(RECIPE), "--workdir", str(tmp_path / "ray"), *ON_RAY, env=env)
    assert on_ray.returncode == 0, on_ray.stdout[-3000:] + on_ray.stderr[-3000:]

    a, b = stages_of(tmp_path / "local"), stages_of(tmp_path / "ray")
    assert {n: s["fingerprint"] for n, s in a.items()} == {n: s["fingerprint"] for n, s in b.items()}
    packed = [outputs_of(s["pack"])["dataset"] for s in (a, b)]
    assert (packed[1] / "parquet" / "train.parquet").is_file() and any(packed[1].rglob("*.arrow"))
    assert digests(packed[0]) == digests(packed[1])
    for name in ("filter", "dedup", "tokenize"):
        for out, path in outputs_of(a[name]).items():
            assert digests(path) == digests(outputs_of(b[name])[out]), (name, out)
    # every computed shard ran as a Ray task on the test's instance, as the stages' logs say
    for name in ("source", "filter", "dedup", "tokenize"):
        log = (tmp_path / "ray" / "clean-and-pack" / "logs" / f"{name}.log").read_text()
        ran = re.findall(r": (\d+) shard\(s\) ran as Ray tasks on the cluster at (\S+) ", log)
        assert ran and all(where == local_ray for _, where in ran), (name, log[-2000:])
        assert sum(int(n) for n, _ in ran) == b[name]["metrics"]["shards_computed"] >= 1, name
    assert shard_tasks_run(ray) > before  # and Ray saw them (its task events are best effort: no exact count)


def test_shards_one_executor_finished_are_reused_by_the_other(tmp_path, real_texts, save_texts, local_ray):
    """A filter run killed after some shards on the local pool resumes on
    Ray: the finished shards are reused, the others run as Ray tasks, and the
    output is the bytes of an uninterrupted run."""
    docs = save_texts(tmp_path / "in", real_texts[:900])
    params = {"filters": [{"type": "length", "min_words": 3}, {"type": "paragraph_repetition"}], "shard_size": 60}
    whole = run_stage(FilterStage, {**params, "num_proc": 1}, inputs={"dataset": docs}, workdir=tmp_path / "local")
    shards = sorted(p for p in (tmp_path / "local" / "checkpoint" / "filter-shards").iterdir() if p.is_dir())
    assert whole.metrics["shards_computed"] == len(shards) >= 10

    import ray

    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "local" / "checkpoint", resumed / "checkpoint")
    lost = shards[3::4]  # as if the run had been killed with these shards unfinished
    for shard in lost:
        shutil.rmtree(resumed / "checkpoint" / "filter-shards" / shard.name)
    before = shard_tasks_run(ray)
    on_ray = run_stage(FilterStage, {**params, "executor": {"type": "ray"}}, inputs={"dataset": docs}, workdir=resumed)
    assert on_ray.metrics["shards_computed"] == len(lost) == shard_tasks_since(ray, before, len(lost))
    assert on_ray.metrics["shards_reused"] == len(shards) - len(lost)
    assert not list((resumed / "checkpoint" / "filter-shards").glob(".tmp-*"))
    assert digests(on_ray.outputs["dataset"].path) == digests(whole.outputs["dataset"].path)
    assert on_ray.metrics["documents_out"] == whole.metrics["documents_out"] < len(real_texts[:900])


def test_without_ray_the_error_says_how_to_install_it(tmp_path, real_texts, save_texts, cli_imports):
    """Ray is imported only when a recipe asks for it: `recipe validate` of a
    recipe on Ray does not import it, and a run without it installed stops
    with the pip command."""
    out = cli_imports(["validate", str(RECIPE), "--set", "defaults.executor.type=ray"])
    assert out.exit_code == 0 and "ray" not in out.modules, out.stderr

    docs = save_texts(tmp_path / "in", real_texts[:50])
    code = (
        "import sys; sys.modules['ray'] = None  # as if Ray were not installed\n"
        "from pathlib import Path\n"
        "from recipe_runner import DATASET, Artifact, StageError\n"
        "from recipe_runner.testing import run_stage\n"
        "from recipe_runner_stages.data.filter.stage import FilterStage\n"
        "try:\n"
        f"    run_stage(FilterStage, {{'executor': {{'type': 'ray'}}}}, inputs={{'dataset': "
        f"Artifact(DATASET, Path({str(docs.path)!r}))}}, workdir=Path({str(tmp_path / 'w')!r}))\n"
        "except StageError as e:\n    print('StageError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "StageError: executor type 'ray' needs Ray, which is not installed: pip install \"recipe-runner[ray]\"" in (
        out.stdout
    ), out.stdout + out.stderr


def _planted(table, tmp: Path, mode: str) -> dict:
    """A shard function that fails on a document holding BOOM: it raises, or its process dies outright."""
    import os

    texts = table.column("text").to_pylist()
    if any("BOOM" in t for t in texts):
        if mode == "raise":
            raise RuntimeError("planted failure")
        os._exit(3)  # as the OOM killer would end it
    (tmp / "rows.txt").write_text(str(len(texts)))
    return {"rows": len(texts)}


@pytest.mark.parametrize("mode", ["raise", "die"])
def test_a_failing_task_names_its_documents_and_the_finished_shards_stay(tmp_path, local_ray, mode):
    """A shard whose code raises, or whose worker dies (after Ray's retries),
    is a StageError naming its documents; every other shard is committed."""
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    texts = [f"document {i}" for i in range(100)]
    texts[75] = "BOOM"
    shards = [(f"train-{a:010d}-{a + 10:010d}", "train", a, a + 10) for a in range(0, 100, 10)]
    plan = ShardPlan({"train": pa.table({"text": texts})}, shards, 2, 100, RayExecutor(type="ray"))
    store = ShardStore(tmp_path / "shards", {"test": mode})
    with pytest.raises(StageError, match=r"failed in split 'train', documents 70\.\.79: ") as err:
        map_shards(store, plan, _planted, {"mode": mode}, what="testing", on_done=lambda *_: None)
    assert ("RuntimeError: planted failure" if mode == "raise" else "WorkerCrashedError") in str(err.value)
    kept = sorted(p.name for p in store.root.iterdir() if p.is_dir())
    assert kept == [name for name, *_ in shards if name != "train-0000000070-0000000080"]
    assert all((store.root / name / "rows.txt").read_text() == "10" for name in kept)
