"""Hub sources fail at once, with a clear message, when the hub is offline
or cannot be reached."""

from __future__ import annotations

import time

import pytest

from recipe_runner import StageError


def test_hub_source_fails_at_once_offline(tmp_path, monkeypatch, run_source):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(StageError, match="upstage/Pretraining_Dataset.*offline"):
        run_source(tmp_path, [{"dataset": "upstage/Pretraining_Dataset", "split": "train"}])
    assert time.perf_counter() - t < 30


def test_hub_source_fails_at_once_without_network(tmp_path, monkeypatch, run_source):
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as imported in a process not told to stay offline
    t = time.perf_counter()
    with pytest.raises(StageError, match="not reachable"):
        run_source(
            tmp_path, [{"type": "hub", "dataset": "upstage/Pretraining_Dataset", "streaming": True, "take": 100}]
        )
    assert time.perf_counter() - t < 10


def test_a_hub_source_naming_a_local_directory_is_read_and_keyed_by_content(tmp_path, data_dir, run_source):
    """`datasets` loads a dataset directory given as the name: offline, and
    its files are the stage's local inputs (their content in the key)."""
    from recipe_runner_stages.data.source.stage import SourceParams, SourceStage

    local = tmp_path / "obqa"
    local.mkdir()
    (local / "train.jsonl").write_text((data_dir / "openbookqa.jsonl").read_text())
    source = {"type": "hub", "dataset": str(local), "text_column": "id", "take": 50}
    dd, m = run_source(tmp_path, [source])
    assert len(dd["train"]) == 50 and m[f"documents.{local}"] == 50
    assert SourceStage.local_inputs(SourceParams.model_validate({"sources": [source]})) == {"sources.0.dataset": local}
    remote = SourceParams.model_validate({"sources": [{"dataset": "upstage/Pretraining_Dataset"}]})
    assert SourceStage.local_inputs(remote) == {}
