"""The worker-pool path of the data stages (``num_proc`` > 1): the same
output as one process, and a failing or killed worker reported with its
documents while the finished shards are kept; Ctrl-C and a killed parent
leave no worker behind."""

from __future__ import annotations

import pytest

from recipe_runner import StageError
from recipe_runner.testing import run_stage
from recipe_runner_stages.data.dedup.stage import DedupStage
from recipe_runner_stages.data.filter.stage import FilterStage
from recipe_runner_stages.data.tokenize.stage import TokenizeStage


def test_filter_in_workers_equals_one_process(tmp_path, real_texts, shakespeare_paragraphs, save_texts, columns_of):
    val = shakespeare_paragraphs[3000:3300] + ["Ceci n'est pas une pipe, mais un texte en français."] * 3
    art = save_texts(tmp_path / "in", real_texts, val)
    params = {
        "filters": [
            {"type": "paragraph_length"},
            {"type": "paragraph_repetition"},
            {"type": "language", "languages": ["en"], "min_score": 0.4},
            {"type": "c4"},
        ],
        "shard_size": 150,
        "batch_size": 64,
    }
    one = run_stage(FilterStage, {**params, "num_proc": 1}, inputs={"dataset": art}, workdir=tmp_path / "one")
    two = run_stage(FilterStage, {**params, "num_proc": 2}, inputs={"dataset": art}, workdir=tmp_path / "two")
    assert two.metrics["shards_computed"] > 2
    for split in ("train", "validation"):
        assert columns_of(one.outputs["dataset"], split) == columns_of(two.outputs["dataset"], split)
    strip = lambda m: {k: v for k, v in m.items() if not k.startswith("shards_")}  # noqa: E731
    assert strip(one.metrics) == strip(two.metrics)
    assert one.metrics["removed.language"] >= 3 and one.metrics["documents_out"] < one.metrics["documents_in"]


def test_dedup_and_tokenize_in_workers_equal_one_process(
    tmp_path, real_texts, tiny_tokenizer_dir, save_texts, columns_of
):
    docs = real_texts + real_texts[:300]  # planted exact duplicates
    art = save_texts(tmp_path / "in", docs, source=["x"] * len(docs))
    d1 = run_stage(DedupStage, {"num_proc": 1, "shard_size": 200}, inputs={"dataset": art}, workdir=tmp_path / "d1")
    d2 = run_stage(DedupStage, {"num_proc": 2, "shard_size": 200}, inputs={"dataset": art}, workdir=tmp_path / "d2")
    assert d1.metrics["exact_duplicates_removed"] == d2.metrics["exact_duplicates_removed"] >= 300
    assert columns_of(d1.outputs["dataset"]) == columns_of(d2.outputs["dataset"])
    tok = {"tokenizer": str(tiny_tokenizer_dir), "shard_size": 250, "batch_size": 40}
    t1 = run_stage(
        TokenizeStage, {**tok, "num_proc": 1}, inputs={"dataset": d1.outputs["dataset"]}, workdir=tmp_path / "t1"
    )
    t2 = run_stage(
        TokenizeStage, {**tok, "num_proc": 2}, inputs={"dataset": d1.outputs["dataset"]}, workdir=tmp_path / "t2"
    )
    c1, c2 = columns_of(t1.outputs["dataset"]), columns_of(t2.outputs["dataset"])
    assert c1 == c2 and set(c1) == {"source", "input_ids", "num_tokens"}
    assert t1.metrics["num_tokens"] == t2.metrics["num_tokens"] == sum(c1["num_tokens"])


def _planted(save_texts, tmp_path, monkeypatch, docs, at, marker):
    """A dataset with ``marker`` appended to document ``at``, and the flag file
    that arms the test plugins (removing it "fixes" the problem)."""
    docs = list(docs)
    docs[at] = docs[at] + "\n" + marker
    flag = tmp_path / "explode.flag"
    flag.write_text("")
    monkeypatch.setenv("EXPLODE_FLAG", str(flag))
    return save_texts(tmp_path / "in", docs), flag


def test_failing_worker_names_documents_and_keeps_finished_shards(
    tmp_path, filter_plugin, shakespeare_paragraphs, monkeypatch, save_texts
):
    art, flag = _planted(save_texts, tmp_path, monkeypatch, shakespeare_paragraphs[:1000], 650, "BOOM")
    params = {"filters": [{"type": "explode"}], "shard_size": 100, "num_proc": 2}
    with pytest.raises(StageError, match=r"documents 600\.\.699: RuntimeError: planted failure"):
        run_stage(FilterStage, params, inputs={"dataset": art}, workdir=tmp_path / "w")
    flag.unlink()
    r = run_stage(FilterStage, params, inputs={"dataset": art}, workdir=tmp_path / "w")
    assert r.metrics["shards_reused"] >= 1 and r.metrics["shards_reused"] + r.metrics["shards_computed"] == 10
    assert r.metrics["documents_out"] == 1000


def test_killed_worker_is_an_error_not_a_hang(tmp_path, filter_plugin, shakespeare_paragraphs, monkeypatch, save_texts):
    art, flag = _planted(save_texts, tmp_path, monkeypatch, shakespeare_paragraphs[:600], 420, "DIE")
    params = {"filters": [{"type": "die"}], "shard_size": 100, "num_proc": 2}
    with pytest.raises(StageError, match=r"filtering failed: a worker process died \(killed, or out of memory\?\)"):
        run_stage(FilterStage, params, inputs={"dataset": art}, workdir=tmp_path / "w")
    flag.unlink()
    r = run_stage(FilterStage, params, inputs={"dataset": art}, workdir=tmp_path / "w")
    assert r.metrics["documents_out"] == 600
    assert not list((tmp_path / "w" / "checkpoint" / "filter-shards").glob(".tmp-*"))


INTERRUPTED = """
import sys
from recipe_runner.artifacts import Artifact
from recipe_runner.testing import run_stage
from recipe_runner_stages.data.filter.stage import FilterStage
r = run_stage(FilterStage, {"filters": [{"type": "slow"}], "shard_size": 50, "batch_size": 25,
                            "num_proc": 2}, inputs={"dataset": Artifact("dataset", sys.argv[1])}, workdir=sys.argv[2])
print("DONE", r.metrics["shards_reused"], r.metrics["shards_computed"])
"""


class _SlowFilterRun:
    """The INTERRUPTED script in a subprocess over 3,000 paragraphs (60 shards
    of ~0.4 s on 2 workers), started and waited on until ``min_done`` shards
    are finished; ``workers`` are the pool's process ids at that moment."""

    def __init__(self, save_texts, tmp_path, plugin_dir, paragraphs, min_done, **popen):
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
        self.workers = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True
        ).stdout.split()

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


def test_ctrl_c_stops_the_workers_at_once_and_keeps_finished_shards(
    tmp_path, filter_plugin, shakespeare_paragraphs, save_texts
):
    import signal
    import subprocess
    import time

    run = _SlowFilterRun(
        save_texts,
        tmp_path,
        filter_plugin,
        shakespeare_paragraphs,
        3,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
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


def test_workers_die_with_a_killed_parent(tmp_path, filter_plugin, shakespeare_paragraphs, save_texts):
    """A parent killed outright (OOM killer, kill -9) must not leave idle
    workers behind holding its file descriptors (the run lock among them)."""
    import signal
    import subprocess
    import time

    run = _SlowFilterRun(
        save_texts,
        tmp_path,
        filter_plugin,
        shakespeare_paragraphs,
        2,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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

    from recipe_runner_stages.data.workers import plain_logging

    logger = logging.getLogger("recipe_runner")
    before = list(logger.handlers)
    rich = RichHandler(level=logging.WARNING)
    logger.addHandler(rich)
    try:
        plain_logging()  # what each forked worker runs first
        assert rich not in logger.handlers
        plain = [h for h in logger.handlers if h not in before]
        assert len(plain) == 1 and type(plain[0]) is logging.StreamHandler and plain[0].level == logging.WARNING
    finally:
        for h in list(logger.handlers):
            if h not in before:
                logger.removeHandler(h)
