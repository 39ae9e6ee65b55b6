"""A tiny local judge model: instruction records from a file, the evaluated
model's responses, score and compare mode end to end."""

from __future__ import annotations

import json
import re

from recipe_runner_stages.evaluate.judge.instructions import load_instruction_items
from recipe_runner_stages.evaluate.judge.judging import judge_models, run_judge
from recipe_runner_stages.evaluate.judge.params import JudgeParams
from recipe_runner_stages.evaluate.judge.responses import generate_responses


def test_tiny_local_judge_and_generation(tiny_model_dir, data_dir):
    items = load_instruction_items(data_dir / "instruction-data.json", 3)
    assert items == json.loads((data_dir / "instruction-data.json").read_text())[-3:]
    responses = generate_responses(str(tiny_model_dir), items, max_new_tokens=6, device="cpu")
    assert len(responses) == 3 and all(isinstance(r, str) for r in responses)

    p = JudgeParams(mode="score", model=str(tiny_model_dir), max_new_tokens=6, device="cpu")
    rows, m = run_judge(p, [{**it, "response": r} for it, r in zip(items, responses, strict=True)])
    assert m["judge_n"] == 3 and m["judge_scored"] + m["judge_unparsed"] == 3
    assert all(r["score"] is None or 0 <= r["score"] <= 100 for r in rows)

    pc = JudgeParams(mode="compare", max_new_tokens=6, device="cpu", num_examples=2, response_max_new_tokens=6)
    rows, m = judge_models(
        pc, str(tiny_model_dir), items, baseline_path=str(tiny_model_dir), judge_model_path=str(tiny_model_dir)
    )
    assert [r["instruction"] for r in rows] == [it["instruction"] for it in items[-2:]]
    assert m["judge_n"] == 2
    assert m["judge_consistent"] + m["judge_flipped"] + m["judge_unparsed"] == 2
    assert all(r["winner"] is None or re.fullmatch(r"a|b|tie", r["winner"]) for r in rows)
