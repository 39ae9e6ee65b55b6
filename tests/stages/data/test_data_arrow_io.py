"""The data stages' output writing: kept rows streamed in bounded pieces,
features and split names kept."""

from __future__ import annotations

from recipe_runner.testing import run_stage
from recipe_runner_stages.data.dedup.stage import DedupStage
from recipe_runner_stages.data.filter.stage import FilterStage


def test_outputs_keep_class_labels_and_split_names(tmp_path, shakespeare_paragraphs):
    """save_streamed writes save_to_disk's layout itself: features such as
    ClassLabel and the split names must come back as they were."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_from_disk

    from recipe_runner.artifacts import Artifact

    texts = list(shakespeare_paragraphs[:400]) + list(shakespeare_paragraphs[:50])  # 50 exact duplicates
    feats = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    splits = {
        s: Dataset.from_dict({"text": t, "label": [i % 2 for i in range(len(t))]}, features=feats, split=s)
        for s, t in (("train", texts), ("validation", list(shakespeare_paragraphs[400:460])))
    }
    DatasetDict(splits).save_to_disk(str(tmp_path / "in"))
    art = Artifact("dataset", tmp_path / "in")
    d = run_stage(DedupStage, {"num_proc": 2, "shard_size": 100}, inputs={"dataset": art}, workdir=tmp_path / "d")
    f = run_stage(
        FilterStage,
        {"filters": [{"type": "paragraph_length"}]},
        inputs={"dataset": d.outputs["dataset"]},
        workdir=tmp_path / "f",
    )
    for r, n_train in ((d, 400), (f, None)):
        out = load_from_disk(str(r.outputs["dataset"].path))
        assert out["train"].features == feats and out["train"].split == "train"
        assert out["validation"].split == "validation"
        assert out["train"].features["label"].int2str(out["train"][0]["label"]) in ("neg", "pos")
        if n_train:
            assert len(out["train"]) == n_train


def test_kept_rows_bounds_pieces_by_bytes():
    import numpy as np
    import pyarrow as pa

    from recipe_runner_stages.data.arrow_io import kept_rows

    table = pa.table({"text": ["x" * 100_000] * 300 + ["y"] * 1000})
    keep = np.ones(table.num_rows, dtype=bool)
    keep[::3] = False
    pieces = list(kept_rows(table, keep, chunk_rows=500, chunk_bytes=2 * 2**20))
    assert pa.concat_tables(pieces).column("text").to_pylist() == [
        t for t, k in zip(table.column("text").to_pylist(), keep, strict=True) if k
    ]
    assert max(p.nbytes for p in pieces) <= 2.1 * 2**20
    assert max(p.num_rows for p in pieces) <= 500
