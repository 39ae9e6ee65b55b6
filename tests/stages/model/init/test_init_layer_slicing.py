"""Layer slicing: depth up-scaling copies layers bit for bit (as mergekit's
passthrough merge does) with a consistent KV cache after renumbering,
downscaling drops the middle layers, per-layer config lists follow."""

from __future__ import annotations

from recipe_runner.testing import run_stage
from recipe_runner_stages.model.init.layer_slicing import slice_layers
from recipe_runner_stages.model.init.random_init import build_config, build_random_model
from recipe_runner_stages.model.init.stage import InitStage


def test_depth_upscale_copies_layers_bit_for_bit(base_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    res = run_stage(
        InitStage,
        {"layer_slices": [[0, 3], [1, 4]]},
        inputs={"model": base_model.outputs["model"]},
        workdir=tmp_path,
        name="scale",
    )
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

    res = run_stage(
        InitStage, {"layer_slices": [[0, 1], [3, 4]]}, inputs={"model": base_model.outputs["model"]}, workdir=tmp_path
    )
    assert res.metrics["mode"] == "downscale" and res.metrics["layer_map"] == [0, 3]
    base = AutoModelForCausalLM.from_pretrained(str(base_model.outputs["model"].path))
    down = AutoModelForCausalLM.from_pretrained(str(res.outputs["model"].path))
    per_layer = sum(p.numel() for p in base.model.layers[0].parameters())
    assert res.metrics["num_parameters"] == base_model.metrics["num_parameters"] - 2 * per_layer
    assert torch.equal(down.model.layers[1].mlp.up_proj.weight, base.model.layers[3].mlp.up_proj.weight)


def test_slicing_keeps_per_layer_config_lists():
    cfg = build_config(
        "qwen2",
        {
            "num_hidden_layers": 3,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "vocab_size": 50,
            "use_sliding_window": True,
            "sliding_window": 8,
            "max_window_layers": 1,
        },
    )
    model = build_random_model(cfg, device="meta")
    before = list(model.config.layer_types)
    lmap = slice_layers(model, [(0, 2), (1, 3)])
    assert model.config.layer_types == [before[i] for i in lmap]
    assert model.config.num_hidden_layers == 4
