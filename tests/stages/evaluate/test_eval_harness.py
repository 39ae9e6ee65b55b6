"""lm-eval tasks in the eval stage: the offline TruthfulQA mc2 task scores
what mc2 means and gives the numbers of the ``lm_eval`` command line itself;
OpenBookQA and sample generations (greedy and sampled) land in report.json
and the flat metrics; unknown tasks fail clearly; presets expand."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from recipe_runner.stage import StageError
from recipe_runner.testing import run_stage
from recipe_runner_stages.evaluate.harness import expand, local_tasks_dir
from recipe_runner_stages.evaluate.stage import EvalStage


def _mc2_by_hand(model, tok, questions) -> float:
    """TruthfulQA mc2 from the CSV, scored directly with the model: log p(answer | QA prompt + question)
    for every true and false answer, mass of the true ones after normalising."""
    import torch

    scores = []
    for context, true, false in questions:
        lls = []
        for ans in true + false:
            whole = tok(context + " " + ans)["input_ids"]
            n_ctx = len(tok(context)["input_ids"])
            ids = torch.tensor([whole])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
            lls.append(float(sum(logp[i - 1, whole[i]] for i in range(n_ctx, len(whole)))))
        p = [math.exp(x - max(lls)) for x in lls]
        scores.append(sum(p[: len(true)]) / sum(p))
    return sum(scores) / len(scores)


def test_local_truthfulqa_mc2_and_generation(
    model_art, model, tmp_path, truthfulqa_questions, tiny_tokenizer_dir, monkeypatch
):
    import torch
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    prompt = "I am an engineer. I love"
    res = run_stage(
        EvalStage,
        {
            "tasks": [{"name": "truthfulqa_mc2_local"}],
            "limit": 3,
            "batch_size": 4,
            "device": "cpu",
            "generation": {"prompts": [prompt], "max_new_tokens": 12, "do_sample": False},
        },
        inputs={"model": model_art},
        workdir=tmp_path,
    )
    expected = _mc2_by_hand(model, tok, truthfulqa_questions(3))
    assert res.metrics["truthfulqa_mc2_local/acc"] == pytest.approx(expected, rel=1e-4)
    report = json.loads((res.outputs["report"].path / "report.json").read_text())
    assert report["tasks"]["truthfulqa_mc2_local"]["num_fewshot"] == 0
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        greedy = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    assert report["samples"] == [
        {"prompt": prompt, "sample": 1, "completion": tok.decode(greedy[0, enc["input_ids"].shape[1] :], True)}
    ]
    assert report["generation"]["num_samples"] == 1 and report["generation"]["repetition_penalty"] is None
    assert "truthfulqa_mc2_local/acc" in (res.outputs["report"].path / "report.md").read_text()


def test_numbers_equal_the_lm_eval_command_line(model_art, tmp_path, monkeypatch):
    """The stage wraps the loaded model in HFLM and calls simple_evaluate; the
    `lm_eval` CLI loads the same directory itself: the same accuracy, exactly."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    res = run_stage(
        EvalStage,
        {"tasks": ["truthfulqa_mc2_local"], "limit": 3, "batch_size": 4, "device": "cpu", "precision": "fp32"},
        inputs={"model": model_art},
        workdir=tmp_path / "stage",
    )
    cli = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
           f"pretrained={model_art.path},dtype=float32", "--device", "cpu", "--tasks", "truthfulqa_mc2_local",
           "--include_path", str(local_tasks_dir()), "--limit", "3", "--batch_size", "4", "--seed", "0",
           "--output_path", str(tmp_path / "cli")]  # fmt: skip
    subprocess.run(cli, check=True, capture_output=True, timeout=600)
    (results_file,) = (tmp_path / "cli").rglob("results*.json")
    cli_results = json.loads(results_file.read_text())["results"]["truthfulqa_mc2_local"]
    assert res.metrics["truthfulqa_mc2_local/acc"] == cli_results["acc,none"]


def test_openbookqa_local_and_sampling(model_art, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    res = run_stage(
        EvalStage,
        {
            "tasks": ["openbookqa_local"],
            "limit": 4,
            "device": "cpu",
            "generation": {
                "prompts": ["To be, or not"],
                "do_sample": True,
                "temperature": 0.8,
                "top_k": 20,
                "top_p": 0.9,
                "repetition_penalty": 1.2,
                "max_new_tokens": 8,
            },
        },
        inputs={"model": model_art},
        workdir=tmp_path,
    )
    assert 0.0 <= res.metrics["openbookqa_local/acc"] <= 1.0
    assert {"openbookqa_local/acc", "openbookqa_local/acc_norm"} <= set(res.metrics)
    report = json.loads((res.outputs["report"].path / "report.json").read_text())
    assert report["tasks"]["openbookqa_local"]["samples"] == 4
    assert report["generation"]["top_k"] == 20 and report["samples"][0]["completion"]


def test_bad_task_fails_clearly(model_art, tmp_path):
    with pytest.raises(StageError, match="did you mean truthfulqa_mc2_local"):
        run_stage(
            EvalStage,
            {"tasks": ["truthfulqa_mc3_local"], "device": "cpu"},
            inputs={"model": model_art},
            workdir=tmp_path,
        )


def test_leaderboard_preset_expands():
    specs = expand(["leaderboard", {"name": "arc_easy", "num_fewshot": 3, "limit": 10}])
    assert [(s["name"], s["num_fewshot"]) for s in specs] == [
        ("arc_challenge", 25),
        ("hellaswag", 10),
        ("mmlu", 5),
        ("truthfulqa_mc2", 0),
        ("winogrande", 5),
        ("gsm8k", 5),
        ("arc_easy", 3),
    ]
