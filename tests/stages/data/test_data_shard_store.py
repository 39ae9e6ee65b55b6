"""The shard stores' keys: what does not change a shard's content does not
invalidate it."""

from __future__ import annotations

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
