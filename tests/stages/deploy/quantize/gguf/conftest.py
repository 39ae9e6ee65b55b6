"""Fixtures of the GGUF tests: the texts and per-type tolerances they check,
logits of a source model and of a GGUF file on the same ids, the sharpened
tiny model written once per file type, and a Llama-2-style model (byte-fallback
BPE, grouped-query attention, tied embeddings)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from recipe_runner_stages.deploy.quantize.gguf.writer import write_gguf

VERDICT_SNIPPET = (
    "I HAD always thought Jack Gisburn rather a cheap genius--though a good fellow enough--"
    "so it was no great surprise to me to hear that, in the height of his glory, he had dropped his painting."
)


@pytest.fixture(scope="session")
def verdict_snippet() -> str:
    return VERDICT_SNIPPET


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    """Prose, a prompt, whitespace, unicode and inline special tokens."""
    return [
        VERDICT_SNIPPET,
        "I am an engineer. I love",
        "  leading spaces,\ttabs\nand newlines -- 1234567 !?",
        "Unicode: café, naïve, 東京, emoji 🙂",
        "special tokens inline: <s> and </s> and <pad>",
    ]


@pytest.fixture(scope="session")
def tolerance() -> dict[str, float]:
    """Relative logit error allowed per file type (see rel_err); measured on the
    sharpened tiny model: f32 ~1e-7, f16 ~6e-4, q8_0 ~1.4e-2, q4_0 ~0.21; a
    wrong Q/K row layout gives ~0.55 whatever the type."""
    return {"f32": 1e-5, "f16": 5e-3, "q8_0": 5e-2, "q4_0": 0.35}


@pytest.fixture(scope="session")
def source_logits(sample_texts: list[str]) -> Callable[..., tuple[list[list[int]], list[Any]]]:
    """``source_logits(model_dir, texts=first two sample texts)``: (token ids, float32 logits per text)."""

    def logits(model_dir: Path, texts: list[str] | None = None) -> tuple[list[list[int]], list[Any]]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        ids = [tok(t)["input_ids"] for t in (texts or sample_texts[:2])]
        with torch.no_grad():
            return ids, [model(torch.tensor([i])).logits[0] for i in ids]

    return logits


@pytest.fixture(scope="session")
def gguf_logits() -> Callable[[Path, list[list[int]]], list[Any]]:
    """``gguf_logits(gguf_path, ids)``: the file loaded by transformers (float32), logits per id list."""

    def logits(gguf_path: Path, ids: list[list[int]]) -> list[Any]:
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        with torch.no_grad():
            return [model(torch.tensor([i])).logits[0] for i in ids]

    return logits


@pytest.fixture(scope="session")
def gguf_files(
    tmp_path_factory: pytest.TempPathFactory, sharp_model_dir: Path, tolerance: dict[str, float]
) -> dict[str, Path]:
    """The sharpened tiny model written as f32, f16, q8_0 and q4_0 GGUF files."""
    out = tmp_path_factory.mktemp("gguf")
    return {t: write_gguf(sharp_model_dir, out / f"model.{t}.gguf", t).path for t in tolerance}


@pytest.fixture(scope="session")
def llama_bpe_model_dir(
    tmp_path_factory: pytest.TempPathFactory, data_dir: Path, sharpen_attention: Callable[[Any], None]
) -> Path:
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
    tok.train(
        [str(data_dir / "the-verdict.txt")],
        trainers.BpeTrainer(vocab_size=600, special_tokens=special, show_progress=False),
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    out = tmp_path_factory.mktemp("llama_bpe_model")
    hf.save_pretrained(str(out))
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(hf),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            bos_token_id=1,
            eos_token_id=2,
        )
    )
    sharpen_attention(model)  # as in sharp_model_dir
    model.save_pretrained(str(out))
    return out
