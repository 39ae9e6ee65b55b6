"""Judging through an OpenAI-compatible endpoint (a local server): order
swapping and flip counting, score mode, the API key read from the named
environment variable, the saved table, and clear configuration errors."""

from __future__ import annotations

import csv
import json

import pytest

from recipe_runner.stage import StageError
from recipe_runner_stages.evaluate.judge.instructions import save_table
from recipe_runner_stages.evaluate.judge.judging import run_judge
from recipe_runner_stages.evaluate.judge.params import JudgeParams


def test_compare_swaps_order_and_counts_flips(judge_server, monkeypatch, tmp_path):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test-123")
    endpoint = {"base_url": judge_server.url, "model": "fixed", "api_key_env": "TEST_JUDGE_KEY", "timeout_s": 5}
    p = JudgeParams(mode="compare", endpoint=endpoint, label_a="before", label_b="after")
    items = (
        [{"instruction": f"q{i}", "response_a": "meh", "response_b": "GOOD answer"} for i in range(5)]
        + [{"instruction": "q5", "response_a": "GOOD answer", "response_b": "meh"}]
        + [{"instruction": f"BIASED {i}", "response_a": "x", "response_b": "y"} for i in range(2)]
    )
    rows, m = run_judge(p, items)
    assert m["judge_consistent"] == 6 and m["judge_flipped"] == 2 and m["judge_unparsed"] == 0
    assert m["judge_win_rate_after"] == pytest.approx(5 / 6) and m["judge_win_rate_before"] == pytest.approx(1 / 6)
    assert [r["winner"] for r in rows] == ["b"] * 5 + ["a", None, None]
    assert rows[-1]["verdict_ab"] == "a" and rows[-1]["verdict_ba"] == "b" and not rows[-1]["consistent"]
    assert rows[0]["reason"] == "Because it is better."
    assert len(judge_server.seen_auth) == 16 and set(judge_server.seen_auth) == {"Bearer sk-test-123"}

    files = save_table(rows, tmp_path, "judge")
    lines = (tmp_path / files["jsonl"]).read_text().splitlines()
    assert [json.loads(x)["winner"] for x in lines] == [r["winner"] for r in rows]
    with (tmp_path / files["csv"]).open() as f:
        assert len(list(csv.DictReader(f))) == 8


def test_score_mode_through_the_endpoint(judge_server):
    p = JudgeParams(mode="score", endpoint={"base_url": judge_server.url, "model": "fixed", "timeout_s": 5})
    items = [{"instruction": "Name a colour.", "input": "", "output": "Blue.", "response": "Red."}] * 3
    rows, m = run_judge(p, items)
    assert m["judge_mean_score"] == 70 and m["judge_scored"] == 3 and rows[0]["score"] == 70
    assert judge_server.seen_auth == [None] * 3


def test_missing_key_variable_and_bad_config():
    p = JudgeParams(endpoint={"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "SURELY_UNSET_VAR_42"})
    with pytest.raises(StageError, match="SURELY_UNSET_VAR_42"):
        run_judge(p, [{"instruction": "x", "output": "y", "response": "z"}])
    with pytest.raises(ValueError, match="only one"):
        JudgeParams(model="x", endpoint={"base_url": "http://127.0.0.1:9/v1", "model": "m"})
    with pytest.raises(StageError, match="no judge model"):
        run_judge(JudgeParams(), [{"instruction": "x", "output": "y", "response": "z"}])
