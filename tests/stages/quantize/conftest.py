"""Fixtures of the quantize tests.

``sharp_model_dir`` is the shared ``tiny_model_dir`` with its q_proj/k_proj
weights scaled by 8: a randomly initialised model (std 0.02) attends almost
uniformly, which would hide a wrong Q/K row layout in a GGUF (the logits would
barely move); with sharper attention a wrong layout changes them by ~50%.
"""
from __future__ import annotations

from pathlib import Path

import pytest

@pytest.fixture(scope="session")
def sharp_model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    out = tmp_path_factory.mktemp("sharp_model")
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def verdict_dataset(tmp_path_factory, data_dir) -> Path:
    """A `dataset` artifact directory: the-verdict.txt's paragraphs, 80% train / 20% validation."""
    from datasets import Dataset, DatasetDict

    paras = [p for p in (data_dir / "the-verdict.txt").read_text().split("\n") if p.strip()]
    cut = int(len(paras) * 0.8)
    out = tmp_path_factory.mktemp("verdict_ds")
    DatasetDict(
        train=Dataset.from_dict({"text": paras[:cut]}), validation=Dataset.from_dict({"text": paras[cut:]})
    ).save_to_disk(str(out))
    return out


def _relative_logit_error(logits, ref) -> float:
    """||logits - ref|| / ||ref - mean(ref)|| over the whole batch."""
    centred = ref - ref.mean(dim=-1, keepdim=True)
    return float((logits - ref).norm() / centred.norm())


@pytest.fixture(scope="session")
def rel_err():
    return _relative_logit_error
