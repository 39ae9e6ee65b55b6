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


def test_saved_bytes_depend_on_the_rows_not_on_their_chunking(tmp_path, shakespeare_paragraphs):
    """Shards, batches and workers hand save_streamed the same rows in other
    pieces: the files written (state.json's fingerprint included) are the
    same bytes, in record batches of datasets' 1000 rows."""
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset

    from recipe_runner_stages.data.arrow_io import save_streamed

    texts = shakespeare_paragraphs[:2500]
    table = pa.table(
        {
            "text": texts,
            "url": [None if i % 7 == 0 else f"u{i}" for i in range(len(texts))],  # nulls in places
            "input_ids": [list(range(i % 50)) for i in range(len(texts))],
        }
    )
    template = Dataset(table.slice(0, 0))

    def pieces(sizes):
        a = 0
        for n in sizes:
            yield table.slice(a, n)
            a += n

    rng = np.random.default_rng(0)
    chunkings = {
        "whole": [len(texts)],
        "shards": [1200, 0, 1300],
        "random": list(np.diff([0, *sorted(rng.choice(len(texts) - 1, 40, replace=False) + 1), len(texts)])),
        "ones": [1] * 30 + [len(texts) - 30],
    }
    files = {}
    for name, sizes in chunkings.items():
        save_streamed({"train": (template, pieces(sizes))}, tmp_path / name)
        files[name] = {
            p.relative_to(tmp_path / name): p.read_bytes() for p in (tmp_path / name).rglob("*") if p.is_file()
        }
    assert all(f == files["whole"] for f in files.values())
    arrow = next(p for p in (tmp_path / "whole" / "train").glob("*.arrow"))
    with pa.memory_map(str(arrow)) as src:
        assert [b.num_rows for b in pa.ipc.open_stream(src)] == [1000, 1000, 500]


def test_save_dataset_dict_fingerprints_the_content(tmp_path, shakespeare_paragraphs):
    """save_to_disk writes the fingerprint datasets keeps, which for rows read
    from a file depends on the file's path (or is random): the saved split's
    fingerprint is a digest of its data files instead, so the same rows read
    from two copies of a dataset save to the same bytes, other rows get
    another fingerprint."""
    import json
    import shutil

    from datasets import Dataset

    from recipe_runner_stages.data.arrow_io import save_dataset_dict

    Dataset.from_dict({"text": shakespeare_paragraphs[:100]}).save_to_disk(str(tmp_path / "here"))
    shutil.copytree(tmp_path / "here", tmp_path / "elsewhere")

    def save(where, rows):
        ds = Dataset.from_file(str(next((tmp_path / where).glob("*.arrow"))))
        save_dataset_dict({"train": ds.select(rows)}, tmp_path / f"out-{where}-{len(rows)}")
        return (tmp_path / f"out-{where}-{len(rows)}" / "train" / "state.json").read_bytes()

    here = save("here", [5, 3, 9])
    assert save("elsewhere", [5, 3, 9]) == here
    assert json.loads(save("here", [5, 3]))["_fingerprint"] != json.loads(here)["_fingerprint"]
