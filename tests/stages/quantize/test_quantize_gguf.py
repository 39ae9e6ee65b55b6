"""GGUF export: the file read back through transformers' GGUF loader (and by
llama.cpp where llama-cpp-python is installed) behaves like the source model."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

VERDICT_SNIPPET = (
    "I HAD always thought Jack Gisburn rather a cheap genius--though a good fellow enough--"
    "so it was no great surprise to me to hear that, in the height of his glory, he had dropped his painting."
)

TEXTS = [
    VERDICT_SNIPPET,
    "I am an engineer. I love",
    "  leading spaces,\ttabs\nand newlines -- 1234567 !?",
    "Unicode: café, naïve, 東京, emoji 🙂",
    "special tokens inline: <s> and </s> and <pad>",
]

# relative logit error allowed per file type (see conftest.relative_logit_error);
# measured on the sharpened tiny model: f32 ~1e-7, f16 ~6e-4, q8_0 ~1.4e-2, q4_0 ~0.21;
# a wrong Q/K row layout gives ~0.55 whatever the type.
TOLERANCE = {"f32": 1e-5, "f16": 5e-3, "q8_0": 5e-2, "q4_0": 0.35}


def _source_logits(model_dir: Path, texts=TEXTS[:2]):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    ids = [tok(t)["input_ids"] for t in texts]
    with torch.no_grad():
        return ids, [model(torch.tensor([i])).logits[0] for i in ids]


def _gguf_logits(gguf_path: Path, ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    with torch.no_grad():
        return [model(torch.tensor([i])).logits[0] for i in ids]


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory, sharp_model_dir):
    from recipe_runner_stages.deploy.gguf_convert import write_gguf

    out = tmp_path_factory.mktemp("gguf")
    return {t: write_gguf(sharp_model_dir, out / f"model.{t}.gguf", t).path for t in TOLERANCE}


@pytest.mark.parametrize("gguf_type", list(TOLERANCE))
def test_gguf_logits_match_source(gguf_type, gguf_files, sharp_model_dir, rel_err):
    import torch

    ids, ref = _source_logits(sharp_model_dir)
    got = _gguf_logits(gguf_files[gguf_type], ids)
    err = rel_err(torch.cat(got), torch.cat(ref))
    assert err < TOLERANCE[gguf_type], f"{gguf_type}: relative logit error {err:.3g}"
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


def test_qk_permutation_is_what_makes_logits_match(tmp_path, sharp_model_dir, rel_err, monkeypatch):
    """Without llama.cpp's Q/K row permutation the file loads but computes a
    different function: the check above would catch a layout bug."""
    import torch

    import recipe_runner_stages.deploy.gguf_convert as gc

    monkeypatch.setattr(gc, "permute_qk", lambda w, n_head, n_kv: w)
    path = gc.write_gguf(sharp_model_dir, tmp_path / "unpermuted.f32.gguf", "f32").path
    ids, ref = _source_logits(sharp_model_dir)
    assert rel_err(torch.cat(_gguf_logits(path, ids)), torch.cat(ref)) > 0.2


def test_gguf_tokenizer_encodes_like_source(gguf_files, sharp_model_dir):
    from transformers import AutoTokenizer

    src = AutoTokenizer.from_pretrained(str(sharp_model_dir))
    path = gguf_files["q8_0"]
    gt = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in TEXTS:
        assert gt(text)["input_ids"] == src(text)["input_ids"], text
        assert gt.decode(src(text)["input_ids"]) == src.decode(src(text)["input_ids"])
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(gt, attr) == getattr(src, attr), attr
    # every source token keeps its id (transformers' GGUF loader builds a GPT2Tokenizer, which also adds
    # its default "<|endoftext|>" after the vocabulary: an artefact of the loader, not of the file)
    gv = gt.get_vocab()
    assert all(gv.get(t) == i for t, i in src.get_vocab().items())


def test_gguf_metadata_keys(gguf_files, sharp_model_dir):
    from recipe_runner_stages.deploy.gguf_convert import read_gguf_metadata

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


def _independent_perplexity(model, tok, texts, n_tokens):
    """exp(loss) from transformers' own loss over the first n_tokens of the
    texts joined by EOS: the stage's recipe, computed another way."""
    import torch

    ids = []
    for t in texts:
        ids += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([ids[:n_tokens]])
    with torch.no_grad():
        return math.exp(float(model(ids, labels=ids).loss))


def test_quantize_stage_gguf_with_lineage(tmp_path, sharp_model_dir, verdict_dataset):
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipe_runner.artifacts import DATASET, GGUF_FILE, MODEL, Artifact
    from recipe_runner.stage import StageContext
    from recipe_runner.testing import collect_outputs
    from recipe_runner_stages.deploy.gguf_convert import read_gguf_metadata
    from recipe_runner_stages.deploy.quantize import QuantizeStage

    lineage = {
        "recipe": "tiny-demo", "seed": 7,
        "stage": {"name": "to_gguf", "type": "quantize", "fingerprint": "f" * 64},
        "upstream": [{"name": "pretrain", "type": "pretrain", "fingerprint": "a" * 64, "metrics": {"loss": 1.5}}],
        "versions": {},
    }
    params = QuantizeStage.Params.model_validate(
        {"method": "gguf", "gguf_type": "q8_0", "max_eval_tokens": 256, "eval_seq_len": 256, "max_new_tokens": 8}
    )
    model_art = Artifact(MODEL, sharp_model_dir, producer="pretrain", fingerprint="a" * 64)
    ctx = StageContext(
        name="to_gguf", params=params,
        inputs={"model": model_art, "dataset": Artifact(DATASET, verdict_dataset)},
        output_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt", seed=7,
        log=logging.getLogger("test.quantize"), recipe_name="tiny-demo", lineage=lineage,
    )
    (tmp_path / "ckpt").mkdir()
    outputs = collect_outputs(QuantizeStage, params, ctx, QuantizeStage().run(ctx))
    art = outputs["gguf"]
    assert art.kind == GGUF_FILE
    files = list(Path(art.path).glob("*.gguf"))
    assert [f.name for f in files] == ["model.q8_0.gguf"] == [art.meta["file"]]

    md = read_gguf_metadata(files[0])
    assert md["recipe_runner.recipe"] == "tiny-demo"
    assert md["recipe_runner.stage_fingerprint"] == "f" * 64
    assert md["recipe_runner.source_model_fingerprint"] == "a" * 64
    assert json.loads(md["recipe_runner.lineage"])["upstream"][0]["name"] == "pretrain"
    assert "tiny-demo" in md["general.description"] and md["general.name"] == "tiny-demo"
    from gguf import GGUFReader

    assert GGUFReader(str(files[0])).fields["recipe_runner.upstream"].contents() == [f"pretrain:pretrain:{'a' * 64}"]

    m = ctx.metrics
    src_size = sum(f.stat().st_size for f in sharp_model_dir.glob("*.safetensors"))
    assert m["source_size_bytes"] == src_size and m["size_bytes"] == files[0].stat().st_size
    assert m["compression_ratio"] == pytest.approx(src_size / files[0].stat().st_size, rel=1e-3)
    assert m["compression_ratio"] > 3  # fp32 -> ~8.5 bits per weight
    assert m["eval_split"] == "validation" and m["eval_tokens"] == 256

    tok = AutoTokenizer.from_pretrained(str(sharp_model_dir))
    texts = [t for t in load_from_disk(str(verdict_dataset))["validation"]["text"] if t]
    src = AutoModelForCausalLM.from_pretrained(str(sharp_model_dir), dtype=torch.float32)
    q = AutoModelForCausalLM.from_pretrained(str(art.path), gguf_file=files[0].name, dtype=torch.float32)
    assert m["perplexity_before"] == pytest.approx(_independent_perplexity(src, tok, texts, 256), rel=1e-3)
    assert m["perplexity_after"] == pytest.approx(_independent_perplexity(q, tok, texts, 256), rel=1e-3)
    assert m["perplexity_delta"] == pytest.approx(m["perplexity_after"] - m["perplexity_before"], abs=1e-3)
    assert abs(m["perplexity_delta"]) / m["perplexity_before"] < 0.02
    assert isinstance(m["sample_before"], str) and isinstance(m["sample_after"], str)
    assert m["prompt"] == "I am an engineer. I love"


def test_gguf_refuses_non_llama(tmp_path, tiny_tokenizer_dir):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from recipe_runner.stage import StageError
    from recipe_runner_stages.deploy.gguf_convert import write_gguf

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=512, n_positions=64)).save_pretrained(
        str(tmp_path / "m"))
    AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir)).save_pretrained(str(tmp_path / "m"))
    with pytest.raises(StageError, match="Llama-family"):
        write_gguf(tmp_path / "m", tmp_path / "x.gguf", "q8_0")


def test_gguf_runs_in_llama_cpp(gguf_files, sharp_model_dir, rel_err):
    """The same files through llama.cpp itself (llama-cpp-python), where it is
    installed: same token ids, logits within tolerance, and for f16 the same
    greedy continuation as transformers on the source model."""
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python to run llama.cpp here)"
    )
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(sharp_model_dir))
    ids, ref = _source_logits(sharp_model_dir, [VERDICT_SNIPPET])
    prompt = tok("I am an engineer. I love")["input_ids"]
    src = AutoModelForCausalLM.from_pretrained(str(sharp_model_dir), dtype=torch.float32)
    expected = src.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt):].tolist()
    for gguf_type in ("f16", "q8_0"):
        llm = llama_cpp.Llama(model_path=str(gguf_files[gguf_type]), n_ctx=256, logits_all=True, verbose=False,
                              n_threads=2)
        assert llm.token_bos() == tok.bos_token_id and llm.token_eos() == tok.eos_token_id
        for text in TEXTS:  # special=True: parse "<s>" etc. as transformers does
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text)["input_ids"], text
        llm.eval(ids[0])
        got = torch.from_numpy(np.asarray(llm.scores[: len(ids[0])], dtype=np.float32))
        assert rel_err(got, ref[0]) < TOLERANCE[gguf_type] * 2, gguf_type
        if gguf_type == "f16":
            llm.reset()
            gen = []
            for t in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0):
                gen.append(t)
                if len(gen) == len(expected):
                    break
            assert gen == expected


def test_gguf_llama_sentencepiece_style_tokenizer_gqa_tied(tmp_path, llama_bpe_model_dir, rel_err):
    """Byte-fallback BPE is written as llama.cpp's sentencepiece vocabulary
    ('llama': pieces, merge-rank scores, BYTE/CONTROL types); GQA K rows are
    permuted with the KV head count; tied embeddings write no output.weight."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from recipe_runner_stages.deploy.gguf_convert import read_gguf_metadata, write_gguf

    path = write_gguf(llama_bpe_model_dir, tmp_path / "m.f16.gguf", "f16").path
    md = read_gguf_metadata(path)
    assert md["tokenizer.ggml.model"] == "llama" and md["tokenizer.ggml.add_bos_token"] is True
    assert "output.weight" not in {t.name for t in GGUFReader(str(path)).tensors}

    src = AutoTokenizer.from_pretrained(str(llama_bpe_model_dir))
    gt = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    # (transformers rebuilds a non-legacy LlamaTokenizer from a GGUF: text starting with
    # two spaces, or text right after a special token, is split differently there; llama.cpp
    # itself matches the source on those too -- see test_gguf_runs_in_llama_cpp_llama_vocab)
    for text in (VERDICT_SNIPPET, "Unicode: café, naïve, 東京", "x\ny\tz 1234567"):
        assert gt(text)["input_ids"] == src(text)["input_ids"], text
    ids, ref = _source_logits(llama_bpe_model_dir)
    assert rel_err(torch.cat(_gguf_logits(path, ids)), torch.cat(ref)) < TOLERANCE["f16"]


def test_gguf_runs_in_llama_cpp_llama_vocab(tmp_path, llama_bpe_model_dir):
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python to run llama.cpp here)"
    )
    from transformers import AutoTokenizer

    from recipe_runner_stages.deploy.gguf_convert import write_gguf

    path = write_gguf(llama_bpe_model_dir, tmp_path / "m.q8_0.gguf", "q8_0").path
    src = AutoTokenizer.from_pretrained(str(llama_bpe_model_dir))
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, verbose=False, vocab_only=True)
    for text in TEXTS + ["  two leading spaces", "</s> after a special token"]:
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == src(text)["input_ids"], text


def test_gguf_rows_not_multiple_of_block_fall_back_to_f16(tmp_path, tiny_tokenizer_dir, rel_err):
    """hidden 48: 48-wide rows cannot be cut into 32-weight blocks, so those
    tensors are written F16 (as llama.cpp's converter does); 96-wide rows
    (down_proj) are quantized; the file still computes the source function."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from recipe_runner_stages.deploy.gguf_convert import write_gguf

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
                     ).save_pretrained(str(tmp_path / "m"))
    tok.save_pretrained(str(tmp_path / "m"))
    path = write_gguf(tmp_path / "m", tmp_path / "g" / "m.q8_0.gguf", "q8_0").path
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["token_embd.weight"] == "F16"
    assert types["blk.0.ffn_down.weight"] == "Q8_0"
    ids, ref = _source_logits(tmp_path / "m")
    assert rel_err(torch.cat(_gguf_logits(path, ids)), torch.cat(ref)) < TOLERANCE["q8_0"]
