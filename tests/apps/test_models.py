"""Finding the model a recipe's run built (or the one a path names) and
loading it, on the tiny recipe's real run."""

from __future__ import annotations

import sys

import pytest

from recipe_runner.apps.models import AppError, ModelSource, adapter_base, find_in_run, load_generator, source_from_path
from recipe_runner.artifacts import ADAPTER, GGUF_FILE, MODEL
from recipe_runner.recipe import load_recipe


@pytest.fixture(scope="module")
def recipe(built_run):
    return load_recipe(built_run.recipe)


def test_default_is_the_last_model_stage_and_an_adapter_gets_the_base_the_recipe_bound(recipe, built_run):
    source = find_in_run(recipe, built_run.workdir, None, "R")

    assert source == ModelSource(ADAPTER, built_run.adapter, "apps-tiny-chat/sft", base=str(built_run.base_model))


def test_a_stage_or_stage_output_is_picked_by_name(recipe, built_run):
    init = find_in_run(recipe, built_run.workdir, "init", "R")
    adapter = find_in_run(recipe, built_run.workdir, "sft.adapter", "R")
    gguf = find_in_run(recipe, built_run.workdir, "quantize", "R")

    assert (init.kind, init.name) == (MODEL, "apps-tiny-chat/init")
    assert (init.path / "config.json").is_file() and init.path != built_run.base_model
    assert adapter.path == built_run.adapter
    assert gguf == ModelSource(GGUF_FILE, built_run.gguf, "apps-tiny-chat/quantize")
    with pytest.raises(AppError, match="stage 'sft' has no model output 'model'; its model outputs: adapter"):
        find_in_run(recipe, built_run.workdir, "sft.model", "R")


def test_later_unbuilt_model_stages_are_named_in_a_note(recipe, built_run):
    changed = load_recipe(built_run.recipe, ["stages.sft.params.max_steps=13"])
    source = find_in_run(changed, built_run.workdir, None, "R")

    assert (source.kind, source.path) == (GGUF_FILE, built_run.gguf)
    assert source.note == "later model stages not built under the current parameters: sft"


def test_a_path_names_an_adapter_a_model_or_a_gguf_file(built_run, tmp_path):
    gguf_dir = tmp_path / "quantized"
    gguf_dir.mkdir()
    (gguf_dir / "model.q8_0.gguf").write_bytes(b"GGUF")

    assert source_from_path(built_run.adapter) == ModelSource(ADAPTER, built_run.adapter, built_run.adapter.name)
    assert source_from_path(built_run.base_model).kind == MODEL
    assert source_from_path(gguf_dir) == ModelSource(GGUF_FILE, gguf_dir / "model.q8_0.gguf", "quantized")
    assert source_from_path(gguf_dir / "model.q8_0.gguf").name == "model.q8_0"
    with pytest.raises(AppError, match="no such model directory or .gguf file"):
        source_from_path(tmp_path / "missing")


def test_an_adapter_by_path_finds_its_base_in_adapter_config(built_run):
    assert adapter_base(source_from_path(built_run.adapter)) == str(built_run.base_model)
    assert adapter_base(source_from_path(built_run.adapter, base="other/base")) == "other/base"


def test_an_adapter_loads_on_its_base_with_its_own_tokenizer_and_chat_template(built_run):
    generator = load_generator(source_from_path(built_run.adapter), device="cpu")

    assert type(generator.model).__name__.startswith("Peft")
    assert generator.chat_template
    assert generator.context_length == 256


def test_a_gguf_file_without_llama_cpp_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if not installed

    with pytest.raises(AppError, match=r"needs llama-cpp-python \(pip install llama-cpp-python\)"):
        load_generator(source_from_path(tmp_path / "model.gguf"))
