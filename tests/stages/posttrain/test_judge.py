"""LLM judge: answer parsing, order swapping and flip counting through a
local OpenAI-compatible server (127.0.0.1, bounded, self-stopping), the API
key read from the named environment variable, a tiny local judge model, and
the saved table."""
from __future__ import annotations

import csv
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from recipe_runner.stage import StageError
from recipe_runner_stages.evaluate.judge import (JudgeParams, generate_responses, judge_models,
                                                 load_instruction_items, parse_score, parse_verdict, run_judge,
                                                 save_table)


@pytest.mark.parametrize("text,expected", [
    ("85", 85), ("Score: 85/100", 85), ("**92**", 92), ("I'd say 77.6.", 78), ("1000 points... 45", 45),
    ("100", 100), ("0", 0), ("no number", None), ("", None),
])
def test_parse_score(text, expected):
    assert parse_score(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("A", "A"), ("**B**", "B"), ("[[A]]", "A"), ("B. It is more accurate.", "B"), ("B is better.", "B"),
    ("Response A is better than response B.", "A"), ("A response with more detail is Response B", "B"),
    ("Verdict: B", "B"), ("The better response is B.", "B"), ("Tie", "TIE"), ("I cannot decide", None),
])
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


class _Judge(BaseHTTPRequestHandler):
    """Chat completions: score prompts get 'Score: 70/100'; compare prompts
    pick the response containing GOOD, except when the instruction says
    BIASED, where it always answers A (position bias)."""

    seen_auth: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen_auth.append(self.headers.get("Authorization"))
        prompt = body["messages"][0]["content"]
        if "scale from 0 to 100" in prompt:
            answer = "Score: 70/100"
        else:
            a = prompt.split("### Response A:")[1].split("### Response B:")[0]
            answer = "A" if ("BIASED" in prompt or "GOOD" in a) else "B"
            answer += "\nBecause it is better."
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def judge_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    server.timeout = 5
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    _Judge.seen_auth = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        t.join(timeout=5)


def test_compare_swaps_order_and_counts_flips(judge_server, monkeypatch, tmp_path):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test-123")
    p = JudgeParams(mode="compare", endpoint={"base_url": judge_server, "model": "fixed", "api_key_env": "TEST_JUDGE_KEY",
                                              "timeout_s": 5}, label_a="before", label_b="after")
    items = ([{"instruction": f"q{i}", "response_a": "meh", "response_b": "GOOD answer"} for i in range(5)]
             + [{"instruction": "q5", "response_a": "GOOD answer", "response_b": "meh"}]
             + [{"instruction": f"BIASED {i}", "response_a": "x", "response_b": "y"} for i in range(2)])
    rows, m = run_judge(p, items)
    assert m["judge_consistent"] == 6 and m["judge_flipped"] == 2 and m["judge_unparsed"] == 0
    assert m["judge_win_rate_after"] == pytest.approx(5 / 6) and m["judge_win_rate_before"] == pytest.approx(1 / 6)
    assert [r["winner"] for r in rows] == ["b"] * 5 + ["a", None, None]
    assert rows[-1]["verdict_ab"] == "a" and rows[-1]["verdict_ba"] == "b" and not rows[-1]["consistent"]
    assert rows[0]["reason"] == "Because it is better."
    assert len(_Judge.seen_auth) == 16 and set(_Judge.seen_auth) == {"Bearer sk-test-123"}

    files = save_table(rows, tmp_path, "judge")
    lines = (tmp_path / files["jsonl"]).read_text().splitlines()
    assert [json.loads(x)["winner"] for x in lines] == [r["winner"] for r in rows]
    with (tmp_path / files["csv"]).open() as f:
        assert len(list(csv.DictReader(f))) == 8


def test_score_mode_through_the_endpoint(judge_server):
    p = JudgeParams(mode="score", endpoint={"base_url": judge_server, "model": "fixed", "timeout_s": 5})
    items = [{"instruction": "Name a colour.", "input": "", "output": "Blue.", "response": "Red."}] * 3
    rows, m = run_judge(p, items)
    assert m["judge_mean_score"] == 70 and m["judge_scored"] == 3 and rows[0]["score"] == 70
    assert _Judge.seen_auth == [None] * 3


def test_missing_key_variable_and_bad_config():
    p = JudgeParams(endpoint={"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "SURELY_UNSET_VAR_42"})
    with pytest.raises(StageError, match="SURELY_UNSET_VAR_42"):
        run_judge(p, [{"instruction": "x", "output": "y", "response": "z"}])
    with pytest.raises(ValueError, match="only one"):
        JudgeParams(model="x", endpoint={"base_url": "http://127.0.0.1:9/v1", "model": "m"})
    with pytest.raises(StageError, match="no judge model"):
        run_judge(JudgeParams(), [{"instruction": "x", "output": "y", "response": "z"}])


def test_tiny_local_judge_and_generation(tiny_model_dir, data_dir):
    items = load_instruction_items(data_dir / "instruction-data.json", 3)
    assert items == json.loads((data_dir / "instruction-data.json").read_text())[-3:]
    responses = generate_responses(str(tiny_model_dir), items, max_new_tokens=6, device="cpu")
    assert len(responses) == 3 and all(isinstance(r, str) for r in responses)

    p = JudgeParams(mode="score", model=str(tiny_model_dir), max_new_tokens=6, device="cpu")
    rows, m = run_judge(p, [{**it, "response": r} for it, r in zip(items, responses)])
    assert m["judge_n"] == 3 and m["judge_scored"] + m["judge_unparsed"] == 3
    assert all(r["score"] is None or 0 <= r["score"] <= 100 for r in rows)

    pc = JudgeParams(mode="compare", max_new_tokens=6, device="cpu", num_examples=2, response_max_new_tokens=6)
    rows, m = judge_models(pc, str(tiny_model_dir), items, baseline_path=str(tiny_model_dir),
                           judge_model_path=str(tiny_model_dir))
    assert [r["instruction"] for r in rows] == [it["instruction"] for it in items[-2:]]
    assert m["judge_n"] == 2
    assert m["judge_consistent"] + m["judge_flipped"] + m["judge_unparsed"] == 2
    assert all(r["winner"] is None or re.fullmatch(r"a|b|tie", r["winner"]) for r in rows)
