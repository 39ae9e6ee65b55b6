"""Fixtures of the shared-helper tests: the session's tiny Llama (2 layers,
random init, saved with its byte-level BPE tokenizer) loaded in memory,
rows of real text tokenized with that tokenizer, and stage contexts as the
runner builds them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from recipe_runner.artifacts import Artifact
from recipe_runner.stage import Params, StageContext

MakeContext = Callable[..., StageContext[Any]]


@pytest.fixture
def make_context(tmp_path: Path) -> MakeContext:
    """``make_context(params, inputs=None, name="stage")``: a StageContext with
    seed 5, outputs under tmp_path/out and checkpoints under tmp_path/ckpt."""

    def make(params: Params, inputs: Mapping[str, Artifact | None] | None = None, name: str = "stage") -> Any:
        return StageContext(
            name=name,
            params=params,
            inputs=dict(inputs or {}),
            output_dir=tmp_path / "out",
            checkpoint_dir=tmp_path / "ckpt",
            seed=5,
            log=logging.getLogger(f"test.{name}"),
        )

    return make


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="session")
def verdict_rows(tiny_tokenizer: Any, data_dir: Path) -> list[list[int]]:
    """The-verdict's first paragraphs as token ids, EOS after each, cut into
    rows of 24 tokens (the tail dropped): 12 rows of one length."""
    paragraphs = [p for p in (data_dir / "the-verdict.txt").read_text().split("\n\n") if p.strip()]
    flat = [t for p in paragraphs for t in tiny_tokenizer(p)["input_ids"] + [tiny_tokenizer.eos_token_id]]
    return [flat[i : i + 24] for i in range(0, 12 * 24, 24)]
