"""The worker-pool path of the data stages (``num_proc`` > 1): the same
output as one process, shards balanced by bytes, and a failing or killed
worker reported with its documents while the finished shards are kept."""
from __future__ import annotations

import pytest

from recipe_runner.stage import StageError
from recipe_runner.testing import run_stage
from recipe_runner_stages.data._parallel import plan_shards
from recipe_runner_stages.data.dedup import DedupStage
from recipe_runner_stages.data.filter import FilterStage
from recipe_runner_stages.data.tokenize import TokenizeStage

from data_stage_helpers import load_split, save_texts


def _columns(art, split="train"):
    ds = load_split(art, split)
    return {c: list(ds[c]) for c in ds.column_names}


def test_plan_shards_balances_bytes_and_covers_every_row():
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(0)
    lens = np.concatenate([rng.integers(10, 200, 5000), rng.integers(50_000, 400_000, 60)])  # small docs, then big
    table = pa.table({"text": ["x" * int(n) for n in lens]})
    total = int(lens.sum())
    ranges = plan_shards(table, "text", shard_size=1000, num_proc=2)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(lens)
    assert all(a < b for a, b in ranges) and all(b == c for (_, b), (c, _) in zip(ranges, ranges[1:]))
    assert max(b - a for a, b in ranges) <= 1000
    target = max(total / 16, 2**20)
    sizes = [int(lens[a:b].sum()) for a, b in ranges]
    # a shard exceeds the byte target only by its last document
    assert all(s - lens[b - 1] < target for s, (a, b) in zip(sizes, ranges))
    assert plan_shards(pa.table({"text": pa.array([], pa.string())}), "text", 10, 2) == [(0, 0)]
    assert plan_shards(table, "text", shard_size=10**9, num_proc=1) == [(0, len(lens))]  # < 64 MiB


def test_filter_in_workers_equals_one_process(tmp_path, real_texts, shakespeare_paragraphs):
    val = shakespeare_paragraphs[3000:3300] + ["Ceci n'est pas une pipe, mais un texte en français."] * 3
    art = save_texts(tmp_path / "in", real_texts, val)
    params = {"filters": [{"type": "paragraph_length"}, {"type": "paragraph_repetition"},
                          {"type": "language", "languages": ["en"], "min_score": 0.4}, {"type": "c4"}],
              "shard_size": 150, "batch_size": 64}
    one = run_stage(FilterStage, {**params, "num_proc": 1}, inputs={"dataset": art}, workdir=tmp_path / "one")
    two = run_stage(FilterStage, {**params, "num_proc": 2}, inputs={"dataset": art}, workdir=tmp_path / "two")
    assert two.metrics["shards_computed"] > 2
    for split in ("train", "validation"):
        assert _columns(one.outputs["dataset"], split) == _columns(two.outputs["dataset"], split)
    strip = lambda m: {k: v for k, v in m.items() if not k.startswith("shards_")}  # noqa: E731
    assert strip(one.metrics) == strip(two.metrics)
    assert one.metrics["removed.language"] >= 3 and one.metrics["documents_out"] < one.metrics["documents_in"]


def test_dedup_and_tokenize_in_workers_equal_one_process(tmp_path, real_texts, tiny_tokenizer_dir):
    docs = real_texts + real_texts[:300]  # planted exact duplicates
    art = save_texts(tmp_path / "in", docs, source=["x"] * len(docs))
    d1 = run_stage(DedupStage, {"num_proc": 1, "shard_size": 200}, inputs={"dataset": art}, workdir=tmp_path / "d1")
    d2 = run_stage(DedupStage, {"num_proc": 2, "shard_size": 200}, inputs={"dataset": art}, workdir=tmp_path / "d2")
    assert d1.metrics["exact_duplicates_removed"] == d2.metrics["exact_duplicates_removed"] >= 300
    assert _columns(d1.outputs["dataset"]) == _columns(d2.outputs["dataset"])
    tok = {"tokenizer": str(tiny_tokenizer_dir), "shard_size": 250, "batch_size": 40}
    t1 = run_stage(TokenizeStage, {**tok, "num_proc": 1}, inputs={"dataset": d1.outputs["dataset"]},
                   workdir=tmp_path / "t1")
    t2 = run_stage(TokenizeStage, {**tok, "num_proc": 2}, inputs={"dataset": d1.outputs["dataset"]},
                   workdir=tmp_path / "t2")
    c1, c2 = _columns(t1.outputs["dataset"]), _columns(t2.outputs["dataset"])
    assert c1 == c2 and set(c1) == {"source", "input_ids", "num_tokens"}
    assert t1.metrics["num_tokens"] == t2.metrics["num_tokens"] == sum(c1["num_tokens"])


def _planted(tmp_path, monkeypatch, docs, at, marker):
    """A dataset with ``marker`` appended to document ``at``, and the flag file
    that arms the test plugins (removing it "fixes" the problem)."""
    docs = list(docs)
    docs[at] = docs[at] + "\n" + marker
    flag = tmp_path / "explode.flag"
    flag.write_text("")
    monkeypatch.setenv("EXPLODE_FLAG", str(flag))
    return save_texts(tmp_path / "in", docs), flag


def test_failing_worker_names_documents_and_keeps_finished_shards(tmp_path, filter_plugin, shakespeare_paragraphs,
                                                                 monkeypatch):
    art, flag = _planted(tmp_path, monkeypatch, shakespeare_paragraphs[:1000], 650, "BOOM")
    params = {"filters": [{"type": "plugin", "plugin": "explode"}], "shard_size": 100, "num_proc": 2}
    with pytest.raises(StageError, match=r"documents 600\.\.699: RuntimeError: planted failure"):
        run_stage(FilterStage, params, inputs={"dataset": art}, workdir=tmp_path / "w")
    flag.unlink()
    r = run_stage(FilterStage, params, inputs={"dataset": art}, workdir=tmp_path / "w")
    assert r.metrics["shards_reused"] >= 1 and r.metrics["shards_reused"] + r.metrics["shards_computed"] == 10
    assert r.metrics["documents_out"] == 1000


def test_killed_worker_is_an_error_not_a_hang(tmp_path, filter_plugin, shakespeare_paragraphs, monkeypatch):
    art, flag = _planted(tmp_path, monkeypatch, shakespeare_paragraphs[:600], 420, "DIE")
    params = {"filters": [{"type": "plugin", "plugin": "die"}], "shard_size": 100, "num_proc": 2}
    with pytest.raises(StageError, match=r"filtering failed: a worker process died \(killed, or out of memory\?\)"):
        run_stage(FilterStage, params, inputs={"dataset": art}, workdir=tmp_path / "w")
    flag.unlink()
    r = run_stage(FilterStage, params, inputs={"dataset": art}, workdir=tmp_path / "w")
    assert r.metrics["documents_out"] == 600
    assert not list((tmp_path / "w" / "checkpoint" / "filter-shards").glob(".tmp-*"))


INTERRUPTED = '''
import sys
from recipe_runner.artifacts import Artifact
from recipe_runner.testing import run_stage
from recipe_runner_stages.data.filter import FilterStage
r = run_stage(FilterStage, {"filters": [{"type": "plugin", "plugin": "slow"}], "shard_size": 50, "batch_size": 25,
                            "num_proc": 2}, inputs={"dataset": Artifact("dataset", sys.argv[1])}, workdir=sys.argv[2])
print("DONE", r.metrics["shards_reused"], r.metrics["shards_computed"])
'''


class _SlowFilterRun:
    """The INTERRUPTED script in a subprocess over 3,000 paragraphs (60 shards
    of ~0.4 s on 2 workers), started and waited on until ``min_done`` shards
    are finished; ``workers`` are the pool's process ids at that moment."""

    def __init__(self, tmp_path, plugin_dir, paragraphs, min_done, **popen):
        import os
        import subprocess
        import time

        self.art = save_texts(tmp_path / "in", list(paragraphs[:3000]))
        self.script = tmp_path / "run.py"
        self.script.write_text(INTERRUPTED)
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")])}
        self.work = tmp_path / "w"
        self.proc = subprocess.Popen(self.argv(), env=self.env, **popen)
        deadline = time.time() + 60
        while time.time() < deadline and self.finished() < min_done:
            time.sleep(0.05)
        self.workers = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                                      text=True).stdout.split()

    def argv(self):
        import sys

        return [sys.executable, str(self.script), str(self.art.path), str(self.work)]

    def finished(self) -> int:
        return len(list((self.work / "checkpoint" / "filter-shards").glob("train-*/meta.json")))

    def alive_workers(self) -> list[str]:
        def alive(pid):
            try:
                return "zombie" not in open(f"/proc/{pid}/status").read().lower()
            except FileNotFoundError:
                return False

        return [w for w in self.workers if alive(w)]


def test_ctrl_c_stops_the_workers_at_once_and_keeps_finished_shards(tmp_path, filter_plugin,
                                                                     shakespeare_paragraphs):
    import signal
    import subprocess
    import time

    run = _SlowFilterRun(tmp_path, filter_plugin, shakespeare_paragraphs, 3,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert len(run.workers) >= 2, "the pool's workers should be running"
    run.proc.send_signal(signal.SIGINT)  # to the stage's process only, as a supervisor would
    t0 = time.time()
    _, err = run.proc.communicate(timeout=20)
    assert run.proc.returncode != 0 and "KeyboardInterrupt" in err
    assert time.time() - t0 < 3, "the interrupted stage waited for its queued shards"
    time.sleep(0.5)
    assert not run.alive_workers(), f"workers left running: {run.alive_workers()}"
    finished = run.finished()
    assert 3 <= finished < 40
    out = subprocess.run(run.argv(), env=run.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    reused, computed = map(int, out.stdout.split()[-2:])
    assert reused == finished and reused + computed == 60


def test_workers_die_with_a_killed_parent(tmp_path, filter_plugin, shakespeare_paragraphs):
    """A parent killed outright (OOM killer, kill -9) must not leave idle
    workers behind holding its file descriptors (the run lock among them)."""
    import signal
    import subprocess
    import time

    run = _SlowFilterRun(tmp_path, filter_plugin, shakespeare_paragraphs, 2,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert len(run.workers) >= 2
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait(timeout=10)
    deadline = time.time() + 5
    while time.time() < deadline and run.alive_workers():
        time.sleep(0.1)
    assert not run.alive_workers(), "workers outlived their killed parent"


def test_forked_workers_log_without_the_rich_console():
    """A worker must not log through the parent's rich console (whose lock the
    parent's display thread may hold at the fork); it gets a plain handler."""
    import logging

    from rich.logging import RichHandler

    from recipe_runner_stages.data._parallel import _plain_logging

    logger = logging.getLogger("recipe_runner")
    before = list(logger.handlers)
    rich = RichHandler(level=logging.WARNING)
    logger.addHandler(rich)
    try:
        _plain_logging()  # what each forked worker runs first
        assert rich not in logger.handlers
        plain = [h for h in logger.handlers if h not in before]
        assert len(plain) == 1 and type(plain[0]) is logging.StreamHandler and plain[0].level == logging.WARNING
    finally:
        for h in list(logger.handlers):
            if h not in before:
                logger.removeHandler(h)


def test_outputs_keep_class_labels_and_split_names(tmp_path, shakespeare_paragraphs):
    """save_streamed writes save_to_disk's layout itself: features such as
    ClassLabel and the split names must come back as they were."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_from_disk

    from recipe_runner.artifacts import Artifact

    texts = list(shakespeare_paragraphs[:400]) + list(shakespeare_paragraphs[:50])  # 50 exact duplicates
    feats = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    splits = {s: Dataset.from_dict({"text": t, "label": [i % 2 for i in range(len(t))]}, features=feats, split=s)
              for s, t in (("train", texts), ("validation", list(shakespeare_paragraphs[400:460])))}
    DatasetDict(splits).save_to_disk(str(tmp_path / "in"))
    art = Artifact("dataset", tmp_path / "in")
    d = run_stage(DedupStage, {"num_proc": 2, "shard_size": 100}, inputs={"dataset": art}, workdir=tmp_path / "d")
    f = run_stage(FilterStage, {"filters": [{"type": "paragraph_length"}]}, inputs={"dataset": d.outputs["dataset"]},
                  workdir=tmp_path / "f")
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

    from recipe_runner_stages.data._util import kept_rows

    table = pa.table({"text": ["x" * 100_000] * 300 + ["y"] * 1000})
    keep = np.ones(table.num_rows, dtype=bool)
    keep[::3] = False
    pieces = list(kept_rows(table, keep, chunk_rows=500, chunk_bytes=2 * 2**20))
    assert pa.concat_tables(pieces).column("text").to_pylist() == \
        [t for t, k in zip(table.column("text").to_pylist(), keep) if k]
    assert max(p.nbytes for p in pieces) <= 2.1 * 2**20
    assert max(p.num_rows for p in pieces) <= 500


def test_shards_are_reused_across_settings_that_do_not_change_them(tmp_path, real_texts):
    """Shard names carry their row ranges, so the store's key leaves out the
    worker count, the batch size and dedup's LSH threshold: a re-run that
    changes only those reuses every shard (and gives the right answer)."""
    art = save_texts(tmp_path / "in", real_texts + real_texts[:100])
    base = {"near_duplicates": True, "shard_size": 200}
    first = run_stage(DedupStage, {**base, "num_proc": 1, "threshold": 0.8}, inputs={"dataset": art},
                      workdir=tmp_path / "w")
    again = run_stage(DedupStage, {**base, "num_proc": 2, "batch_size": 37, "threshold": 0.5, "verify": False},
                      inputs={"dataset": art}, workdir=tmp_path / "w")
    assert first.metrics["shards_computed"] >= 2 and again.metrics["shards_computed"] == 0
    assert again.metrics["shards_reused"] == first.metrics["shards_computed"]
    fresh = run_stage(DedupStage, {**base, "num_proc": 1, "threshold": 0.5, "verify": False},
                      inputs={"dataset": art}, workdir=tmp_path / "fresh")
    assert _columns(again.outputs["dataset"]) == _columns(fresh.outputs["dataset"])
    changed = run_stage(DedupStage, {**base, "num_proc": 1, "shingle_size": 3}, inputs={"dataset": art},
                        workdir=tmp_path / "w")
    assert changed.metrics["shards_reused"] == 0  # the signatures depend on the shingles
