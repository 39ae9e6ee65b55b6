"""Random init: the course's truncated normal, the tokenizer's vocabulary and
special ids in the config, the same weights for the same seed, a tied head
initialised once."""

from __future__ import annotations

import math

from recipe_runner.artifacts import TOKENIZER, Artifact
from recipe_runner.testing import run_stage
from recipe_runner_stages.model.init.random_init import build_config, build_random_model, truncated_normal_init_
from recipe_runner_stages.model.init.stage import InitStage


def test_random_init_truncated_normal(base_model, tiny_tokenizer_dir, llama_param_count):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = base_model.outputs["model"]
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    model = AutoModelForCausalLM.from_pretrained(str(out.path))
    assert AutoTokenizer.from_pretrained(str(out.path)).get_vocab() == tok.get_vocab()
    assert model.config.vocab_size == len(tok) == out.meta["vocab_size"]
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    assert base_model.metrics["num_parameters"] == llama_param_count(len(tok), 32, 64, 4, 4, 2)
    weights = torch.cat(
        [m.weight.detach().flatten() for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))]
    )
    assert weights.abs().max() <= 0.04 + 1e-7  # truncated at 2 std
    # std of a N(0, 0.02) truncated at +-2 std: 0.02 * sqrt(1 - 2*2*phi(2) / (2*Phi(2) - 1))
    phi2 = math.exp(-2) / math.sqrt(2 * math.pi)
    big_phi = 0.5 * (1 + math.erf(2 / math.sqrt(2)))
    expected_std = 0.02 * math.sqrt(1 - 4 * phi2 / (2 * big_phi - 1))
    nonzero = weights[weights != 0]
    assert abs(float(nonzero.std()) - expected_std) < 0.02 * expected_std
    assert abs(float(nonzero.mean())) < 1e-3
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, torch.nn.Embedding)
    assert torch.count_nonzero(embeddings.weight[tok.pad_token_id]) == 0
    norms = [w for name, w in model.named_parameters() if "norm" in name]  # every RMSNorm weight
    assert norms and all(torch.equal(w, torch.ones_like(w)) for w in norms)


def test_same_seed_same_weights(base_model, tmp_path, tiny_tokenizer_dir, tiny_config):
    from safetensors.torch import load_file

    again = run_stage(
        InitStage,
        {"config": tiny_config},
        inputs={"tokenizer": Artifact(TOKENIZER, tiny_tokenizer_dir)},
        workdir=tmp_path,
        seed=3,
    )
    a = load_file(str(base_model.outputs["model"].path / "model.safetensors"))
    b = load_file(str(again.outputs["model"].path / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_tied_head_initialised_once(tiny_config):
    import torch

    cfg = build_config("llama", {**tiny_config, "vocab_size": 64, "pad_token_id": 3, "tie_word_embeddings": True})
    model = build_random_model(cfg)
    counts = truncated_normal_init_(model, 0.02)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert torch.count_nonzero(model.lm_head.weight[3]) == 0  # the pad row survives the shared head
    assert counts["embedding"] == 1 and counts["linear"] == 4 * 7  # q k v o gate up down per layer
