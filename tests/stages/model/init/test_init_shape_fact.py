"""The init stage's ``model_shape`` fact: known at plan time, without torch,
and the same model the stage builds (parameter count checked against it)."""

from __future__ import annotations

from pathlib import Path

from recipe_runner.artifacts import MODEL_SHAPE
from recipe_runner_stages.common.model_shape import count_parameters
from recipe_runner_stages.model.init.params import InitParams
from recipe_runner_stages.model.init.stage import InitStage

CONFIG = {"num_hidden_layers": 3, "hidden_size": 96, "intermediate_size": 200, "num_attention_heads": 6}


def _shape(params: InitParams, inputs: dict | None = None) -> dict | None:
    return InitStage.output_facts(params, inputs or {})["model"].get(MODEL_SHAPE)


def test_random_init_shape_counts_the_parameters_the_stage_builds() -> None:
    from recipe_runner_stages.model.init.random_init import build_config, build_random_model

    for config in (CONFIG, {**CONFIG, "num_key_value_heads": 2, "tie_word_embeddings": True}):
        shape = _shape(InitParams(config=config, vocab_size=700))
        assert shape is not None and shape["vocab_size"] == 700
        model = build_random_model(build_config("llama", {**config, "vocab_size": 700}), device="meta")
        assert count_parameters(shape, 700) == model.num_parameters()


def test_unset_sizes_take_llama_defaults_and_vocab_auto_stays_unknown() -> None:
    shape = _shape(InitParams(config={"hidden_size": 64, "num_attention_heads": 4}))
    assert shape is not None
    assert (shape["num_hidden_layers"], shape["intermediate_size"], shape["vocab_size"]) == (32, 11008, None)
    assert shape["head_dim"] == 16 and shape["num_key_value_heads"] == 4


def test_local_base_model_and_layer_slicing(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = _shape(InitParams(from_pretrained=str(tiny_model_dir)))
    assert shape is not None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(tiny_model_dir)))
    assert count_parameters(shape, shape["vocab_size"]) == model.num_parameters()
    sliced = _shape(InitParams(layer_slices=[(0, 2), (1, 2)]), {"model": {MODEL_SHAPE: shape}})
    assert sliced is not None and sliced["num_hidden_layers"] == 3 and shape["num_hidden_layers"] == 2


def test_hub_base_model_has_no_shape() -> None:
    assert _shape(InitParams(from_pretrained="some-org/some-model")) is None


def test_a_tokenizer_trained_in_the_run_bounds_the_vocabulary() -> None:
    from recipe_runner_stages.data.tokenize.stage import TokenizeParams, TokenizeStage

    trained = TokenizeStage.output_facts(TokenizeParams(train={"vocab_size": 4096}), {})["tokenizer"]
    shape = _shape(InitParams(config=CONFIG), {"tokenizer": trained})
    assert shape is not None and shape["vocab_size"] == 4096 and shape["vocab_size_at_most"] is True
    given = TokenizeStage.output_facts(TokenizeParams(tokenizer="some/dir"), {})
    assert "tokenizer" not in given  # a given tokenizer's size is not known at plan time
