"""Fixtures of the quantize tests.

``sharp_model_dir`` is the shared ``tiny_model_dir`` with its q_proj/k_proj
weights scaled by 8: a randomly initialised model (std 0.02) attends almost
uniformly, which would hide a wrong Q/K row layout in a GGUF (the logits would
barely move); with sharper attention a wrong layout changes them by ~50%.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def _sharpen_attention(model: Any) -> None:
    import torch

    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)


@pytest.fixture(scope="session")
def sharpen_attention() -> Callable[[Any], None]:
    """``sharpen_attention(model)``: q_proj / k_proj weights of every layer times 8 (see the module docstring)."""
    return _sharpen_attention


@pytest.fixture(scope="session")
def sharp_model_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, sharpen_attention: Callable[[Any], None]
) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    sharpen_attention(model)
    out = tmp_path_factory.mktemp("sharp_model")
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def verdict_dataset(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A `dataset` artifact directory: the-verdict.txt's paragraphs, 80% train / 20% validation."""
    from datasets import Dataset, DatasetDict

    paras = [p for p in (data_dir / "the-verdict.txt").read_text().split("\n") if p.strip()]
    cut = int(len(paras) * 0.8)
    out = tmp_path_factory.mktemp("verdict_ds")
    DatasetDict(
        train=Dataset.from_dict({"text": paras[:cut]}), validation=Dataset.from_dict({"text": paras[cut:]})
    ).save_to_disk(str(out))
    return out


@pytest.fixture(scope="session")
def rel_err() -> Callable[[Any, Any], float]:
    """``rel_err(logits, ref)``: ||logits - ref|| / ||ref - mean(ref)|| over the whole batch."""

    def relative_logit_error(logits: Any, ref: Any) -> float:
        centred = ref - ref.mean(dim=-1, keepdim=True)
        return float((logits - ref).norm() / centred.norm())

    return relative_logit_error
