"""The tokenizer in a GGUF file: byte-level BPE encodes like the source with
the same special ids; byte-fallback BPE is written as llama.cpp's
sentencepiece vocabulary (with GQA K rows and tied embeddings)."""

from __future__ import annotations

from recipe_runner_stages.deploy.quantize.gguf.reader import read_gguf_metadata
from recipe_runner_stages.deploy.quantize.gguf.writer import write_gguf


def test_gguf_tokenizer_encodes_like_source(gguf_files, sharp_model_dir, sample_texts):
    from transformers import AutoTokenizer

    src = AutoTokenizer.from_pretrained(str(sharp_model_dir))
    path = gguf_files["q8_0"]
    gt = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in sample_texts:
        assert gt(text)["input_ids"] == src(text)["input_ids"], text
        assert gt.decode(src(text)["input_ids"]) == src.decode(src(text)["input_ids"])
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(gt, attr) == getattr(src, attr), attr
    # every source token keeps its id (transformers' GGUF loader builds a GPT2Tokenizer, which also adds
    # its default "<|endoftext|>" after the vocabulary: an artefact of the loader, not of the file)
    gv = gt.get_vocab()
    assert all(gv.get(t) == i for t, i in src.get_vocab().items())


def test_gguf_llama_sentencepiece_style_tokenizer_gqa_tied(
    tmp_path, llama_bpe_model_dir, rel_err, tolerance, verdict_snippet, source_logits, gguf_logits
):
    """Byte-fallback BPE is written as llama.cpp's sentencepiece vocabulary
    ('llama': pieces, merge-rank scores, BYTE/CONTROL types); GQA K rows are
    permuted with the KV head count; tied embeddings write no output.weight."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    path = write_gguf(llama_bpe_model_dir, tmp_path / "m.f16.gguf", "f16").path
    md = read_gguf_metadata(path)
    assert md["tokenizer.ggml.model"] == "llama" and md["tokenizer.ggml.add_bos_token"] is True
    assert "output.weight" not in {t.name for t in GGUFReader(str(path)).tensors}

    src = AutoTokenizer.from_pretrained(str(llama_bpe_model_dir))
    gt = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    # (transformers rebuilds a non-legacy LlamaTokenizer from a GGUF: text starting with
    # two spaces, or text right after a special token, is split differently there; llama.cpp
    # itself matches the source on those too -- see test_gguf_runs_in_llama_cpp_llama_vocab)
    for text in (verdict_snippet, "Unicode: café, naïve, 東京", "x\ny\tz 1234567"):
        assert gt(text)["input_ids"] == src(text)["input_ids"], text
    ids, ref = source_logits(llama_bpe_model_dir)
    assert rel_err(torch.cat(gguf_logits(path, ids)), torch.cat(ref)) < tolerance["f16"]
