"""common/models.py: loading and saving model directories, the starting model
of a stage, and facts read off a loaded model."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from recipe_runner.artifacts import DATASET, MODEL, Artifact
from recipe_runner.stage import Params, StageContext, StageError
from recipe_runner_stages.common.models import (
    MODEL_INPUT,
    count_parameters,
    current_umask,
    decoder_layers,
    load_causal_lm,
    load_for_inference,
    load_tokenizer,
    local_path,
    max_positions,
    model_input_slots,
    model_meta,
    resolve_model_path,
    save_model_artifact,
    save_model_dir,
)


def test_load_tokenizer_pads_with_eos_when_the_tokenizer_has_no_pad(tmp_path: Path, tiny_tokenizer: Any) -> None:
    tiny_tokenizer.save_pretrained(str(tmp_path))
    with_pad = load_tokenizer(tmp_path)
    assert with_pad.pad_token == "<pad>"
    tok = load_tokenizer(tmp_path)
    tok.pad_token = None
    tok.save_pretrained(str(tmp_path / "no_pad"))
    no_pad = load_tokenizer(tmp_path / "no_pad")
    assert no_pad.pad_token == no_pad.eos_token == "</s>"


def test_saved_model_dir_loads_back_with_the_same_weights(tmp_path: Path, tiny_lm: Any, tiny_tokenizer: Any) -> None:
    out = save_model_dir(tiny_lm, tiny_tokenizer, tmp_path / "m")
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    assert (out / "tokenizer.json").is_file()
    reloaded = load_causal_lm(out)
    assert reloaded.dtype == torch.float32
    assert all(
        torch.equal(a, b) for a, b in zip(tiny_lm.state_dict().values(), reloaded.state_dict().values(), strict=True)
    )


def test_load_for_inference_gives_an_eval_mode_model_and_its_tokenizer(tiny_model_dir: Path) -> None:
    model, tok = load_for_inference(tiny_model_dir, device="cpu", precision="auto")
    assert not model.training
    assert next(model.parameters()).device.type == "cpu" and model.dtype == torch.float32
    assert tok.eos_token == "</s>"
    bf16, _ = load_for_inference(tiny_model_dir, device="cpu", precision="bf16")
    assert bf16.dtype == torch.bfloat16


def test_facts_of_a_loaded_model(tiny_lm: Any, tiny_tokenizer: Any) -> None:
    expected = sum(p.numel() for p in tiny_lm.parameters())
    assert count_parameters(tiny_lm) == expected > 0
    assert max_positions(tiny_lm) == 256
    assert model_meta(tiny_lm) == {"num_parameters": expected, "num_layers": 2, "vocab_size": tiny_lm.config.vocab_size}
    assert model_meta(tiny_lm, tiny_tokenizer)["vocab_size"] == len(tiny_tokenizer)


def test_save_model_artifact_describes_what_it_saved(tmp_path: Path, tiny_lm: Any, tiny_tokenizer: Any) -> None:
    art = save_model_artifact(tiny_lm, tiny_tokenizer, tmp_path / "m", method="full")
    assert art.kind == MODEL and art.path == tmp_path / "m"
    assert art.meta == {**model_meta(tiny_lm, tiny_tokenizer), "method": "full"}
    assert (art.path / "model.safetensors").is_file()


class _StartParams(Params):
    model_name_or_path: str | None = None


def test_the_starting_model_is_the_parameter_else_the_model_input(
    make_context: Callable[..., StageContext[Any]],
) -> None:
    model = Artifact(MODEL, Path("/runs/init/model"))
    by_name = make_context(_StartParams(model_name_or_path="org/base"), {"model": model})
    assert resolve_model_path(by_name) == "org/base"
    assert resolve_model_path(make_context(_StartParams(), {"model": model})) == "/runs/init/model"
    without = make_context(_StartParams(), {"dataset": Artifact(DATASET, Path("/d"))}, name="sft")
    with pytest.raises(StageError, match="stage 'sft' needs a starting model"):
        resolve_model_path(without)


def test_a_model_given_by_path_drops_the_model_input() -> None:
    slots = {"model": MODEL_INPUT}
    assert model_input_slots(_StartParams(), slots) == slots
    assert model_input_slots(_StartParams(model_name_or_path="org/base"), slots) == {}
    assert slots == {"model": MODEL_INPUT}  # the class's own slots are not changed


def test_decoder_layers_of_llama_and_gpt2(tiny_lm: Any) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    owner, attr = decoder_layers(tiny_lm)
    assert owner is tiny_lm.model and attr == "layers"
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    owner, attr = decoder_layers(gpt2)
    assert owner is gpt2.transformer and attr == "h" and len(getattr(owner, attr)) == 3


def test_decoder_layers_of_a_model_without_them_is_a_stage_error() -> None:
    class _NotADecoder(torch.nn.Module):
        config = type("Config", (), {"num_hidden_layers": 4})()

    with pytest.raises(StageError, match="cannot find the decoder layers of _NotADecoder"):
        decoder_layers(_NotADecoder())


@pytest.fixture(params=[0o022, 0o027])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process's umask set to the parameter for the test, then put back."""
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def test_a_saved_model_dir_has_the_permissions_the_umask_gives(
    tmp_path: Path, tiny_lm: Any, tiny_tokenizer: Any, umask: int
) -> None:
    """safetensors writes its weights 0600; every file of a saved model
    directory gets what a new file gets here (0644 under umask 022, 0640 under 027)."""
    assert current_umask() == umask
    out = save_model_dir(tiny_lm, tiny_tokenizer, tmp_path / "m", max_shard_size="200KB")
    files = sorted(f for f in out.iterdir() if f.is_file())
    assert len([f for f in files if f.suffix == ".safetensors"]) > 1  # sharded: every shard is checked
    modes = {f.name: stat.S_IMODE(os.stat(f).st_mode) for f in files}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)


def test_local_path_is_an_existing_file_or_directory_only(tmp_path: Path) -> None:
    (tmp_path / "data.json").write_text("[]")
    assert local_path(str(tmp_path)) == tmp_path
    assert local_path(str(tmp_path / "data.json")) == tmp_path / "data.json"
    assert local_path("upstage/TinySolar-248m-4k") is None  # a hub id
    assert local_path(str(tmp_path / "missing")) is None
    assert local_path(None) is None and local_path("") is None
