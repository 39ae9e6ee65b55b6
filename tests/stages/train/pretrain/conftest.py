"""Fixtures of the pretrain tests: packed rows built on the spot from real
text with the session's tiny tokenizer, a small Llama made by the init
stage, another tokenizer of the same vocabulary size, and the `recipe` CLI
as users run it (as in tests/engine) on a small data-to-pretrain recipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from recipe_runner.artifacts import PACKED_DATASET, TOKENIZER, Artifact
from recipe_runner.testing import run_stage

#: the init stage's config of the model the pretrain tests train
TINY = {
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}


@pytest.fixture(scope="module")
def packed(packed_dir: Path) -> Artifact:
    return Artifact(PACKED_DATASET, packed_dir, meta={"max_seq_length": 32})


@pytest.fixture(scope="module")
def tiny_config() -> dict[str, int]:
    """The init stage's config of the tiny model (a copy: tests may change it)."""
    return dict(TINY)


@pytest.fixture(scope="module")
def init_model(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Artifact:
    from recipe_runner_stages.model.init import InitStage

    res = run_stage(
        InitStage,
        {"config": TINY},
        inputs={"tokenizer": Artifact(TOKENIZER, tiny_tokenizer_dir)},
        workdir=tmp_path_factory.mktemp("pt_init"),
    )
    return res.outputs["model"]


@pytest.fixture(scope="session")
def shakespeare_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, train_tokenizer: Any) -> Path:
    """Another byte-level BPE tokenizer with the session tokenizer's vocabulary
    size (512) and special tokens, trained on tinyshakespeare instead of the
    verdict: the same ids mean other tokens."""
    tok = train_tokenizer([data_dir / "tinyshakespeare.txt"], vocab_size=512)
    out = tmp_path_factory.mktemp("shakespeare_tokenizer")
    tok.save_pretrained(str(out))
    return out


#: the data-to-pretrain recipe of the CLI tests: the verdict's paragraphs, a BPE tokenizer of 512 tokens trained
#: here, rows of 32 tokens, the tiny Llama; ``{init}`` and ``{pretrain}`` are the last two stages' (extra) params
RECIPE = """
name: tiny-pretrain
seed: 3
defaults: {{precision: fp32, device: cpu, cpu_threads: 1}}
stages:
  - type: source
    params:
      sources: [{{name: verdict, path: "${{paths.data}}/the-verdict.txt", split_by: blank_lines}}]
      validation: 0.1
  - type: tokenize
    params: {{train: {{algorithm: bpe, vocab_size: 512}}}}
  - type: pack
    params: {{max_seq_length: 32}}
  - type: init
    params: {{config: {config}{init}}}
  - type: pretrain
    params: {{{pretrain}}}
"""


@pytest.fixture()
def tiny_recipe(tmp_path: Path) -> Callable[..., Path]:
    """``tiny_recipe(pretrain={...}, init={...})``: the CLI tests' recipe written to tmp_path/recipe.yaml."""

    def make(pretrain: dict[str, Any], init: dict[str, Any] | None = None) -> Path:
        def flow(d: dict[str, Any]) -> str:
            return ", ".join(f"{k}: {json.dumps(v)}" for k, v in d.items())

        extra = ", " + flow(init) if init else ""
        pretrain = {"per_device_train_batch_size": 4, "logging_steps": 5, **pretrain}
        text = RECIPE.format(config=json.dumps(TINY), init=extra, pretrain=flow(pretrain))
        path = tmp_path / "recipe.yaml"
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return make


def _recipe_cli(*args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "recipe_runner.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture()
def recipe_cli() -> Callable[..., subprocess.CompletedProcess]:
    """Run `recipe ARGS...` in a subprocess: recipe_cli("run", path, "--workdir", wd)."""
    return _recipe_cli


@pytest.fixture()
def status_json() -> Callable[..., dict[str, dict[str, Any]]]:
    """`recipe status RECIPE --workdir DIR --json EXTRA...`, parsed: its stages by name."""

    def status(recipe: Path, workdir: Path, *extra: str) -> dict[str, dict[str, Any]]:
        proc = _recipe_cli("status", str(recipe), "--workdir", str(workdir), "--json", *extra, check=True)
        return {s["name"]: s for s in json.loads(proc.stdout)["stages"]}

    return status
