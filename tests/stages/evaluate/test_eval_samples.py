"""The eval stage's sample generations: by default three samples per prompt,
sampled with temperature 0.8, top-p 0.95 and a repetition penalty of 1.2 from
the recipe's seed (the same bytes on every run, exactly what transformers'
generate gives from that seed); greedy decoding when asked, one completion."""

from __future__ import annotations

import json

import pytest

from recipe_runner.testing import run_stage
from recipe_runner_stages.evaluate.params import GenerationParams
from recipe_runner_stages.evaluate.stage import EvalStage

PROMPTS = ["I am an engineer. I love", "The picture was"]


def _samples(model_art, workdir, generation, seed=42):
    res = run_stage(
        EvalStage,
        {"device": "cpu", "precision": "fp32", "generation": generation},
        inputs={"model": model_art},
        workdir=workdir,
        seed=seed,
    )
    return res.outputs["report"].path


def test_default_samples_are_seeded_draws_with_the_documented_settings(model_art, model, tmp_path):
    import torch
    from transformers import AutoTokenizer

    out = _samples(model_art, tmp_path / "a", {"prompts": PROMPTS, "max_new_tokens": 10})
    report = json.loads((out / "report.json").read_text())
    assert [(s["prompt"], s["sample"]) for s in report["samples"]] == [(q, k) for q in PROMPTS for k in (1, 2, 3)]
    g = report["generation"]
    assert (g["do_sample"], g["temperature"], g["top_p"], g["repetition_penalty"]) == (True, 0.8, 0.95, 1.2)
    assert (g["num_samples"], g["seed"]) == (3, 42)

    # the same draws by hand: transformers' generate, seeded once with the recipe's seed, one sample after another
    tok = AutoTokenizer.from_pretrained(str(model_art.path))
    sampling = {"do_sample": True, "temperature": 0.8, "top_p": 0.95, "repetition_penalty": 1.2}
    torch.manual_seed(42)
    expected = []
    for prompt in PROMPTS:
        enc = tok(prompt, return_tensors="pt")
        for _ in range(3):
            ids = model.generate(**enc, **sampling, max_new_tokens=10, pad_token_id=tok.pad_token_id)
            expected.append(tok.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    assert [s["completion"] for s in report["samples"]] == expected
    assert len(set(expected[:3])) > 1  # three draws, not one completion three times

    again = _samples(model_art, tmp_path / "b", {"prompts": PROMPTS, "max_new_tokens": 10})
    assert (again / "report.json").read_bytes() == (out / "report.json").read_bytes()
    assert (again / "report.md").read_bytes() == (out / "report.md").read_bytes()
    other_seed = _samples(model_art, tmp_path / "c", {"prompts": PROMPTS, "max_new_tokens": 10}, seed=7)
    assert json.loads((other_seed / "report.json").read_text())["samples"] != report["samples"]


def test_greedy_decoding_is_one_plain_completion_per_prompt(model_art, model, tmp_path):
    import torch
    from transformers import AutoTokenizer

    out = _samples(model_art, tmp_path, {"prompts": PROMPTS, "max_new_tokens": 10, "do_sample": False})
    report = json.loads((out / "report.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(model_art.path))
    expected = []
    for prompt in PROMPTS:
        enc = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            new = model.generate(**enc, do_sample=False, max_new_tokens=10, pad_token_id=tok.pad_token_id)
        expected.append(tok.decode(new[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    assert report["samples"] == [
        {"prompt": q, "sample": 1, "completion": c} for q, c in zip(PROMPTS, expected, strict=True)
    ]
    assert report["generation"]["repetition_penalty"] is None  # no penalty unless the recipe sets one


def test_several_greedy_samples_are_refused():
    with pytest.raises(ValueError, match="greedy decoding gives the same completion every time"):
        GenerationParams(prompts=["x"], do_sample=False, num_samples=2)
    assert GenerationParams(prompts=["x"], do_sample=False, num_samples=1).num_samples == 1
