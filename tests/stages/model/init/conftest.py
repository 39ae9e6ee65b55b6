"""Fixtures of the init tests: a tiny Llama shape, and a 4-layer base model
randomly initialised by the stage (seed 3) as the base of the slicing tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from recipe_runner.artifacts import TOKENIZER, Artifact
from recipe_runner.testing import StageResult, run_stage
from recipe_runner_stages.model.init.stage import InitStage


@pytest.fixture(scope="session")
def tiny_config() -> dict[str, Any]:
    return {
        "num_hidden_layers": 4,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
    }


@pytest.fixture(scope="module")
def base_model(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path, tiny_config: dict[str, Any]
) -> StageResult:
    return run_stage(
        InitStage,
        {"config": tiny_config},
        inputs={"tokenizer": Artifact(TOKENIZER, tiny_tokenizer_dir)},
        workdir=tmp_path_factory.mktemp("init_base"),
        seed=3,
    )


@pytest.fixture(scope="session")
def llama_param_count():
    """Llama parameter count from first principles (untied head, no biases):
    ``llama_param_count(vocab, hidden, inter, layers, heads, kv_heads)``."""

    def count(vocab: int, hidden: int, inter: int, layers: int, heads: int, kv_heads: int) -> int:
        head_dim = hidden // heads
        attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q, o + k, v
        mlp = 3 * hidden * inter
        norms = 2 * hidden
        return 2 * vocab * hidden + layers * (attn + mlp + norms) + hidden

    return count
