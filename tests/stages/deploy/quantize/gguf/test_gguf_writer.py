"""The GGUF writer: each file type read back through transformers' GGUF
loader behaves like the source model, quantized tensors get llama.cpp's
types, the Q/K permutation is what makes the logits match, the header keys
describe the model, non-Llama models are refused."""

from __future__ import annotations

import json
import math

import pytest

from recipe_runner.stage import StageError
from recipe_runner_stages.deploy.quantize.gguf import tensors
from recipe_runner_stages.deploy.quantize.gguf.reader import read_gguf_metadata
from recipe_runner_stages.deploy.quantize.gguf.writer import write_gguf

FILE_TYPES = ["f32", "f16", "q8_0", "q4_0"]


@pytest.mark.parametrize("gguf_type", FILE_TYPES)
def test_gguf_logits_match_source(
    gguf_type, gguf_files, sharp_model_dir, rel_err, tolerance, source_logits, gguf_logits
):
    import torch

    ids, ref = source_logits(sharp_model_dir)
    got = gguf_logits(gguf_files[gguf_type], ids)
    err = rel_err(torch.cat(got), torch.cat(ref))
    assert err < tolerance[gguf_type], f"{gguf_type}: relative logit error {err:.3g}"
    if gguf_type != "f32":  # quantized for real, not a copy of the floats
        assert err > 1e-7


def test_gguf_sizes_shrink_with_bits(gguf_files):
    sizes = {t: p.stat().st_size for t, p in gguf_files.items()}
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"] > sizes["q4_0"]
    # Q8_0 stores 34 bytes per 32 weights (8.5 bits), Q4_0 18 bytes (4.5 bits): check the big tensors' types
    from gguf import GGUFReader

    types = {t.name: t.tensor_type.name for t in GGUFReader(str(gguf_files["q4_0"])).tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_0" and types["token_embd.weight"] == "Q4_0"
    assert types["output.weight"] == "Q8_0"  # kept at 8 bits, as llama.cpp keeps it above the rest
    assert types["blk.0.attn_norm.weight"] == "F32" and types["output_norm.weight"] == "F32"


def test_qk_permutation_is_what_makes_logits_match(
    tmp_path, sharp_model_dir, rel_err, monkeypatch, source_logits, gguf_logits
):
    """Without llama.cpp's Q/K row permutation the file loads but computes a
    different function: the check above would catch a layout bug."""
    import torch

    monkeypatch.setattr(tensors, "permute_qk", lambda w, n_head, n_kv: w)
    path = write_gguf(sharp_model_dir, tmp_path / "unpermuted.f32.gguf", "f32").path
    ids, ref = source_logits(sharp_model_dir)
    assert rel_err(torch.cat(gguf_logits(path, ids)), torch.cat(ref)) > 0.2


def test_gguf_metadata_keys(gguf_files, sharp_model_dir):
    cfg = json.loads((sharp_model_dir / "config.json").read_text())
    md = read_gguf_metadata(gguf_files["q8_0"])
    assert md["general.architecture"] == "llama"
    assert md["general.file_type"] == 7  # LlamaFileType.MOSTLY_Q8_0
    assert md["llama.block_count"] == cfg["num_hidden_layers"]
    assert md["llama.embedding_length"] == cfg["hidden_size"]
    assert md["llama.feed_forward_length"] == cfg["intermediate_size"]
    assert md["llama.attention.head_count"] == cfg["num_attention_heads"]
    assert md["llama.attention.head_count_kv"] == cfg["num_key_value_heads"]
    assert md["llama.context_length"] == cfg["max_position_embeddings"]
    assert md["llama.rope.dimension_count"] == cfg["hidden_size"] // cfg["num_attention_heads"]
    assert math.isclose(md["llama.attention.layer_norm_rms_epsilon"], cfg["rms_norm_eps"], rel_tol=1e-6)
    assert md["tokenizer.ggml.model"] == "gpt2" and md["tokenizer.ggml.pre"] == "gpt-2"
    assert md["tokenizer.ggml.bos_token_id"] == cfg["bos_token_id"]
    assert md["tokenizer.ggml.eos_token_id"] == cfg["eos_token_id"]
    assert md["tokenizer.ggml.padding_token_id"] == cfg["pad_token_id"]
    assert md["tokenizer.ggml.add_bos_token"] is False  # the source tokenizer adds no BOS


def test_gguf_refuses_non_llama(tmp_path, tiny_tokenizer_dir):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=512, n_positions=64)).save_pretrained(
        str(tmp_path / "m")
    )
    AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir)).save_pretrained(str(tmp_path / "m"))
    with pytest.raises(StageError, match="Llama-family"):
        write_gguf(tmp_path / "m", tmp_path / "x.gguf", "q8_0")


def test_gguf_rows_not_multiple_of_block_fall_back_to_f16(
    tmp_path, tiny_tokenizer_dir, rel_err, tolerance, source_logits, gguf_logits
):
    """hidden 48: 48-wide rows cannot be cut into 32-weight blocks, so those
    tensors are written F16 (as llama.cpp's converter does); 96-wide rows
    (down_proj) are quantized; the file still computes the source function."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    torch.manual_seed(0)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=64,
        )
    ).save_pretrained(str(tmp_path / "m"))
    tok.save_pretrained(str(tmp_path / "m"))
    path = write_gguf(tmp_path / "m", tmp_path / "g" / "m.q8_0.gguf", "q8_0").path
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["token_embd.weight"] == "F16"
    assert types["blk.0.ffn_down.weight"] == "Q8_0"
    ids, ref = source_logits(tmp_path / "m")
    assert rel_err(torch.cat(gguf_logits(path, ids)), torch.cat(ref)) < tolerance["q8_0"]
