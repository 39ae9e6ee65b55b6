"""init / scale: random init, the course's parameter counts, layer slicing
(down- and depth up-scaling) bit for bit, KV cache after renumbering, and
clear failures."""
from __future__ import annotations

import math

import pytest

from recipe_runner.artifacts import TOKENIZER, Artifact
from recipe_runner.stage import Params, PlanView, StageError
from recipe_runner.testing import run_stage
from recipe_runner_stages.model.init import (InitStage, TINYSOLAR_CONFIG, build_config, build_random_model,
                                             course_param_counts, slice_layers)
from recipe_runner_stages.train.pretrain import PretrainStage

TINY = {"num_hidden_layers": 4, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 64}


def llama_params(vocab, hidden, inter, layers, heads, kv_heads) -> int:
    """Llama parameter count from first principles (untied head, no biases)."""
    head_dim = hidden // heads
    attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q, o + k, v
    mlp = 3 * hidden * inter
    norms = 2 * hidden
    return 2 * vocab * hidden + layers * (attn + mlp + norms) + hidden


def test_course_parameter_counts_on_meta_device():
    counts = course_param_counts()
    # the course's published numbers, and the same from first principles
    assert counts == {"base_12": 248_013_824, "downscaled_10": 217_601_024, "upscaled_16": 308_839_424}
    for key, layers in (("base_12", 12), ("downscaled_10", 10), ("upscaled_16", 16)):
        assert counts[key] == llama_params(32000, 1024, 4096, layers, 32, 8)
    model = build_random_model(build_config("llama", TINYSOLAR_CONFIG), device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing allocated


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, tiny_tokenizer_dir):
    res = run_stage(InitStage, {"config": TINY}, inputs={"tokenizer": Artifact(TOKENIZER, tiny_tokenizer_dir)},
                    workdir=tmp_path_factory.mktemp("init_base"), seed=3)
    return res


def test_random_init_truncated_normal(base_model, tiny_tokenizer_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = base_model.outputs["model"]
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    model = AutoModelForCausalLM.from_pretrained(str(out.path))
    assert AutoTokenizer.from_pretrained(str(out.path)).get_vocab() == tok.get_vocab()
    assert model.config.vocab_size == len(tok) == out.meta["vocab_size"]
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == \
        (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert base_model.metrics["num_parameters"] == llama_params(len(tok), 32, 64, 4, 4, 2)
    weights = torch.cat([m.weight.detach().flatten() for m in model.modules()
                         if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))])
    assert weights.abs().max() <= 0.04 + 1e-7  # truncated at 2 std
    # std of a N(0, 0.02) truncated at +-2 std: 0.02 * sqrt(1 - 2*2*phi(2) / (2*Phi(2) - 1))
    phi2 = math.exp(-2) / math.sqrt(2 * math.pi)
    big_phi = 0.5 * (1 + math.erf(2 / math.sqrt(2)))
    expected_std = 0.02 * math.sqrt(1 - 4 * phi2 / (2 * big_phi - 1))
    nonzero = weights[weights != 0]
    assert abs(float(nonzero.std()) - expected_std) < 0.02 * expected_std
    assert abs(float(nonzero.mean())) < 1e-3
    pad_row = model.get_input_embeddings().weight[tok.pad_token_id]
    assert torch.count_nonzero(pad_row) == 0
    norms = [m.weight for m in model.modules() if "RMSNorm" in type(m).__name__]
    assert norms and all(torch.equal(w, torch.ones_like(w)) for w in norms)


def test_same_seed_same_weights(base_model, tmp_path, tiny_tokenizer_dir):
    from safetensors.torch import load_file

    again = run_stage(InitStage, {"config": TINY}, inputs={"tokenizer": Artifact(TOKENIZER, tiny_tokenizer_dir)},
                      workdir=tmp_path, seed=3)
    a = load_file(str(base_model.outputs["model"].path / "model.safetensors"))
    b = load_file(str(again.outputs["model"].path / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_depth_upscale_copies_layers_bit_for_bit(base_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    res = run_stage(InitStage, {"layer_slices": [[0, 3], [1, 4]]},
                    inputs={"model": base_model.outputs["model"]}, workdir=tmp_path, name="scale")
    assert res.metrics["mode"] == "upscale"
    assert res.metrics["layer_map"] == [0, 1, 2, 1, 2, 3]
    base = AutoModelForCausalLM.from_pretrained(str(base_model.outputs["model"].path))
    up = AutoModelForCausalLM.from_pretrained(str(res.outputs["model"].path))
    assert up.config.num_hidden_layers == 6 == res.outputs["model"].meta["num_layers"]
    for new_idx, src in enumerate(res.metrics["layer_map"]):
        a, b = up.model.layers[new_idx].state_dict(), base.model.layers[src].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert up.model.layers[new_idx].self_attn.layer_idx == new_idx
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(up.get_parameter(name), base.get_parameter(name))
    # the KV cache addresses each layer by its (renumbered) index: cached decoding == full recomputation
    ids = torch.tensor([[5, 17, 42, 7]])
    cached = up.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = up.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    # tokenizer carried along
    assert (res.outputs["model"].path / "tokenizer.json").is_file()


def test_downscale_drops_middle_layers(base_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    res = run_stage(InitStage, {"layer_slices": [[0, 1], [3, 4]]},
                    inputs={"model": base_model.outputs["model"]}, workdir=tmp_path)
    assert res.metrics["mode"] == "downscale" and res.metrics["layer_map"] == [0, 3]
    base = AutoModelForCausalLM.from_pretrained(str(base_model.outputs["model"].path))
    down = AutoModelForCausalLM.from_pretrained(str(res.outputs["model"].path))
    per_layer = sum(p.numel() for p in base.model.layers[0].parameters())
    assert res.metrics["num_parameters"] == base_model.metrics["num_parameters"] - 2 * per_layer
    assert torch.equal(down.model.layers[1].mlp.up_proj.weight, base.model.layers[3].mlp.up_proj.weight)


def test_slicing_keeps_per_layer_config_lists():
    cfg = build_config("qwen2", {"num_hidden_layers": 3, "hidden_size": 16, "intermediate_size": 32,
                                 "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 50,
                                 "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1})
    model = build_random_model(cfg, device="meta")
    before = list(model.config.layer_types)
    lmap = slice_layers(model, [(0, 2), (1, 3)])
    assert model.config.layer_types == [before[i] for i in lmap]
    assert model.config.num_hidden_layers == 4


def test_bad_slices_and_offline_hub_fail_clearly(base_model, tmp_path, monkeypatch):
    with pytest.raises(StageError, match="past the base model's 4 layers"):
        run_stage(InitStage, {"layer_slices": [[0, 3], [2, 6]]},
                  inputs={"model": base_model.outputs["model"]}, workdir=tmp_path / "a")
    with pytest.raises(Exception, match="empty or negative"):
        InitStage.Params.model_validate({"layer_slices": [[3, 3]]})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StageError, match="offline"):
        run_stage(InitStage, {"from_pretrained": "upstage/TinySolar-248m-4k"}, workdir=tmp_path / "b")
    with pytest.raises(StageError, match="needs a tokenizer"):
        run_stage(InitStage, {"config": TINY}, workdir=tmp_path / "c")


class _PackParams(Params):
    max_seq_length: int


def test_cross_checks():
    init_p = InitStage.Params.model_validate({"config": {**TINY, "max_position_embeddings": 64}})
    view = PlanView("pretrain", PretrainStage.Params(), {
        "model": ("init", "init", init_p), "dataset": ("pack", "pack", _PackParams(max_seq_length=128))})
    errors = PretrainStage.cross_check(view)
    assert errors and "max_position_embeddings (64)" in errors[0]
    view.upstream["dataset"] = ("pack", "pack", _PackParams(max_seq_length=64))
    assert PretrainStage.cross_check(view) == []
    scale = InitStage.Params.model_validate({"layer_slices": [[0, 2]]})
    assert any("needs a base model" in e for e in InitStage.cross_check(PlanView("scale", scale, {})))
    assert InitStage.cross_check(PlanView("scale", scale, {"model": ("pre", "pretrain", PretrainStage.Params())})) == []


def test_tied_head_initialised_once():
    import torch

    from recipe_runner_stages.model.init import truncated_normal_init_

    cfg = build_config("llama", {**TINY, "vocab_size": 64, "pad_token_id": 3, "tie_word_embeddings": True})
    model = build_random_model(cfg)
    counts = truncated_normal_init_(model, 0.02)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert torch.count_nonzero(model.lm_head.weight[3]) == 0  # the pad row survives the shared head
    assert counts["embedding"] == 1 and counts["linear"] == 4 * 7  # q k v o gate up down per layer
