"""The lm-eval model of the eval stage (``PositionCheckedLM``): requests
whose prompt does not fit the model's positions are cut from the left as
lm-eval does (the score is lm-eval's own), counted per task and warned
about; an answer that alone does not fit is refused by the task's name
instead of lm-eval's bare AssertionError."""

from __future__ import annotations

import json

import pytest

from recipe_runner.stage import StageError
from recipe_runner.testing import run_stage
from recipe_runner_stages.evaluate.harness import local_tasks_dir
from recipe_runner_stages.evaluate.stage import EvalStage


def test_prompts_longer_than_the_positions_are_cut_counted_and_scored_as_lm_eval_does(
    model_with_positions, tmp_path, truthfulqa_questions, tiny_tokenizer_dir, caplog
):
    """With 400 positions 14 of the 30 mc2 requests of three questions do not fit: lm-eval cuts their prompts
    from the left; the stage counts them (as counted here by hand), warns, and its score is lm-eval's own."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    requests = [(c, a) for c, true, false in truthfulqa_questions(3) for a in true + false]
    too_long = [(c, a) for c, a in requests if len(tok(c + " " + a)["input_ids"]) > 400 + 1]
    assert 0 < len(too_long) < len(requests) == 30
    art = model_with_positions(400)
    params = {"tasks": ["truthfulqa_mc2_local"], "limit": 3, "device": "cpu", "precision": "fp32"}
    with caplog.at_level("WARNING"):
        res = run_stage(EvalStage, params, inputs={"model": art}, workdir=tmp_path / "w")
    assert res.metrics["truthfulqa_mc2_local/truncated_requests"] == len(too_long)
    report = json.loads((res.outputs["report"].path / "report.json").read_text())
    assert report["tasks"]["truthfulqa_mc2_local"]["truncated_requests"] == len(too_long)
    assert f"{len(too_long)} of 30 requests are longer than the model's 400 positions" in caplog.text

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM

    plain = HFLM(pretrained=AutoModelForCausalLM.from_pretrained(str(art.path)), tokenizer=tok, batch_size=8)
    tm = TaskManager(include_path=[str(local_tasks_dir())], include_defaults=False)
    direct = simple_evaluate(model=plain, tasks=["truthfulqa_mc2_local"], task_manager=tm, limit=3, random_seed=0,
                             numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)  # fmt: skip
    assert res.metrics["truthfulqa_mc2_local/acc"] == direct["results"]["truthfulqa_mc2_local"]["acc,none"]


def test_an_answer_longer_than_the_positions_is_refused_by_name(model_with_positions, tmp_path):
    """The second and third questions have answers of 33-50 tokens: with 32 positions no cut prompt makes them fit
    (lm-eval itself fails with a bare AssertionError)."""
    with pytest.raises(StageError) as e:
        run_stage(
            EvalStage,
            {"tasks": ["truthfulqa_mc2_local"], "limit": 3, "device": "cpu"},
            inputs={"model": model_with_positions(32)},
            workdir=tmp_path,
        )
    message = str(e.value)
    assert "task 'truthfulqa_mc2_local'" in message and "more than the model's 32 positions" in message
