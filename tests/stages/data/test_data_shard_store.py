"""The shard stores' keys: what does not change a shard's content does not
invalidate it, under run_stage and under `recipe run`."""

from __future__ import annotations

import json

from recipe_runner.testing import run_stage
from recipe_runner_stages.data.dedup.stage import DedupStage


def test_shards_are_reused_across_settings_that_do_not_change_them(tmp_path, real_texts, save_texts, columns_of):
    """Shard names carry their row ranges, so the store's key leaves out the
    worker count, the batch size and dedup's LSH threshold: a re-run that
    changes only those reuses every shard (and gives the right answer)."""
    art = save_texts(tmp_path / "in", real_texts + real_texts[:100])
    base = {"near_duplicates": True, "shard_size": 200}
    first = run_stage(
        DedupStage, {**base, "num_proc": 1, "threshold": 0.8}, inputs={"dataset": art}, workdir=tmp_path / "w"
    )
    again = run_stage(
        DedupStage,
        {**base, "num_proc": 2, "batch_size": 37, "threshold": 0.5, "verify": False},
        inputs={"dataset": art},
        workdir=tmp_path / "w",
    )
    assert first.metrics["shards_computed"] >= 2 and again.metrics["shards_computed"] == 0
    assert again.metrics["shards_reused"] == first.metrics["shards_computed"]
    fresh = run_stage(
        DedupStage,
        {**base, "num_proc": 1, "threshold": 0.5, "verify": False},
        inputs={"dataset": art},
        workdir=tmp_path / "fresh",
    )
    assert columns_of(again.outputs["dataset"]) == columns_of(fresh.outputs["dataset"])
    changed = run_stage(
        DedupStage, {**base, "num_proc": 1, "shingle_size": 3}, inputs={"dataset": art}, workdir=tmp_path / "w"
    )
    assert changed.metrics["shards_reused"] == 0  # the signatures depend on the shingles


def test_an_interrupted_stage_resumes_with_another_worker_count_under_recipe_run(
    tmp_path, filter_plugin, shakespeare_paragraphs, recipe_cli, stage_keys
):
    """The runner names a stage's checkpoint directory by its key, which
    leaves out run settings, and the shard store's key leaves them out too:
    a filter stage that failed in its 7th shard with one worker resumes with
    two, reusing the 6 finished shards, and writes what an uninterrupted run
    writes."""
    docs = list(shakespeare_paragraphs[:1000])
    docs[650] += "\nBOOM"  # the plugin fails on this one while the flag file exists
    data = tmp_path / "data.txt"
    data.write_text("\n\n".join(docs))
    recipe = tmp_path / "resume.yaml"
    recipe.write_text(
        "name: resume\nstages:\n"
        f"  - {{type: source, params: {{sources: [{{path: '{data}', split_by: blank_lines}}]}}}}\n"
        "  - {type: filter, params: {filters: [{type: explode}], shard_size: 100, num_proc: 1}}\n"
    )
    flag = tmp_path / "explode.flag"
    flag.write_text("")
    env = {"PYTHONPATH": str(filter_plugin), "EXPLODE_FLAG": str(flag)}
    failed = recipe_cli("run", str(recipe), "--workdir", str(tmp_path / "runs"), env=env)
    assert failed.returncode == 1 and "6 finished shard(s) are kept" in failed.stderr
    flag.unlink()
    two = ["--set", "stages.filter.params.num_proc=2"]
    resumed = recipe_cli("run", str(recipe), "--workdir", str(tmp_path / "runs"), *two, env=env)
    assert resumed.returncode == 0, resumed.stderr
    manifest = json.loads((tmp_path / "runs" / "resume" / "manifest.json").read_text())
    metrics = {s["name"]: s["metrics"] for s in manifest["stages"]}["filter"]
    assert metrics["shards_reused"] == 6 and metrics["shards_computed"] == 4
    fresh = recipe_cli("run", str(recipe), "--workdir", str(tmp_path / "fresh"), *two, env=env)
    assert fresh.returncode == 0, fresh.stderr
    assert stage_keys(recipe, tmp_path / "runs", env) == stage_keys(recipe, tmp_path / "fresh", env)

    def output(workdir):
        return {p.name: p.read_bytes() for p in (workdir / "resume" / "stages").glob("filter-*/outputs/**/*.arrow")}

    assert output(tmp_path / "runs") == output(tmp_path / "fresh") != {}
