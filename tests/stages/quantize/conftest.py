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


@pytest.fixture(scope="session")
def llama_bpe_model_dir(tmp_path_factory, data_dir) -> Path:
    """A Llama-2-style model: sentencepiece-like byte-fallback BPE tokenizer
    (``▁`` for spaces, <0xXX> byte tokens, BOS added), grouped-query attention
    (4 heads, 2 KV heads) and tied embeddings -- the other tokenizer and layout
    branches of the GGUF writer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    special = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train([str(data_dir / "the-verdict.txt")], trainers.BpeTrainer(vocab_size=600, special_tokens=special,
                                                                      show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    out = tmp_path_factory.mktemp("llama_bpe_model")
    hf.save_pretrained(str(out))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(hf), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2,
    ))
    with torch.no_grad():
        for layer in model.model.layers:  # sharpen attention, as in sharp_model_dir
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    model.save_pretrained(str(out))
    return out
