"""A data stage that fails or is killed midway reuses its finished shards
when it is run again, and ends with the same output as an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from recipe_runner.stage import StageError
from recipe_runner.testing import run_stage
from recipe_runner_stages.data.filter import FilterStage

from data_stage_helpers import load_split, save_texts


def test_filter_failure_keeps_finished_shards(tmp_path, filter_plugin, shakespeare_paragraphs, monkeypatch):
    docs = list(shakespeare_paragraphs[:1000])
    docs[650] = docs[650] + "\nBOOM"  # the plugin fails on this one (in the 7th shard of 100)
    art = save_texts(tmp_path / "in", docs)
    flag = tmp_path / "explode.flag"
    flag.write_text("")
    monkeypatch.setenv("EXPLODE_FLAG", str(flag))
    params = {"filters": [{"type": "paragraph_length"}, {"type": "plugin", "plugin": "explode"}],
              "shard_size": 100, "num_proc": 1}
    with pytest.raises(StageError, match="documents 600..699.*6 finished shard"):
        run_stage(FilterStage, params, inputs={"dataset": art}, workdir=tmp_path / "w")
    flag.unlink()  # "fix" the problem
    r = run_stage(FilterStage, params, inputs={"dataset": art}, workdir=tmp_path / "w")
    assert r.metrics["shards_reused"] == 6 and r.metrics["shards_computed"] == 4
    clean = run_stage(FilterStage, params, inputs={"dataset": art}, workdir=tmp_path / "clean")
    assert list(load_split(r.outputs["dataset"])["text"]) == list(load_split(clean.outputs["dataset"])["text"])
    assert {k: v for k, v in r.metrics.items() if not k.startswith("shards_")} == \
        {k: v for k, v in clean.metrics.items() if not k.startswith("shards_")}


RUNNER = textwrap.dedent('''
    import sys
    from recipe_runner.artifacts import Artifact
    from recipe_runner.testing import run_stage
    from recipe_runner_stages.data.tokenize import TokenizeStage
    r = run_stage(TokenizeStage, {"tokenizer": sys.argv[1], "shard_size": 150, "batch_size": 50},
                  inputs={"dataset": Artifact("dataset", sys.argv[2])}, workdir=sys.argv[3])
    print("DONE", r.metrics["shards_computed"])
''')


def test_tokenize_killed_midway_resumes(tmp_path, shakespeare_paragraphs, stdlib_sources, tiny_tokenizer_dir):
    from recipe_runner.artifacts import Artifact
    from recipe_runner_stages.data.tokenize import TokenizeStage

    docs = (shakespeare_paragraphs[:1200] + stdlib_sources * 3)
    art = save_texts(tmp_path / "in", docs)
    script = tmp_path / "run.py"
    script.write_text(RUNNER)
    work = tmp_path / "w"
    shards = work / "checkpoint" / "tokenize-shards"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_tokenizer_dir), str(art.path), str(work)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if shards.exists() and len([p for p in shards.glob("train-*") if (p / "meta.json").exists()]) >= 2:
            break
        time.sleep(0.02)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done_before = len([p for p in shards.glob("train-*") if (p / "meta.json").exists()])
    assert done_before >= 2
    r = run_stage(TokenizeStage, {"tokenizer": str(tiny_tokenizer_dir), "shard_size": 150, "batch_size": 50},
                  inputs={"dataset": Artifact("dataset", art.path)}, workdir=work)
    n_shards = -(-len(docs) // 150)
    assert r.metrics["shards_reused"] >= done_before and r.metrics["shards_reused"] >= 2
    assert r.metrics["shards_reused"] + r.metrics["shards_computed"] == n_shards
    if killed:
        assert r.metrics["shards_computed"] >= 1
    clean = run_stage(TokenizeStage, {"tokenizer": str(tiny_tokenizer_dir), "shard_size": 150, "batch_size": 50},
                      inputs={"dataset": Artifact("dataset", art.path)}, workdir=tmp_path / "clean")
    assert list(load_split(r.outputs["dataset"])["input_ids"]) == list(load_split(clean.outputs["dataset"])["input_ids"])
    assert r.metrics["num_tokens"] == clean.metrics["num_tokens"]
