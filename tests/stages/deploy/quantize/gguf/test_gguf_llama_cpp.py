"""The GGUF files through llama.cpp itself (llama-cpp-python), where it is
installed: the same token ids, logits within tolerance, the same greedy
continuation."""

from __future__ import annotations

import pytest

from recipe_runner_stages.deploy.quantize.gguf.writer import write_gguf

LLAMA_CPP_MISSING = "llama-cpp-python is not installed (pip install llama-cpp-python to run llama.cpp here)"


def test_gguf_runs_in_llama_cpp(
    gguf_files, sharp_model_dir, rel_err, tolerance, sample_texts, verdict_snippet, source_logits
):
    """Same token ids, logits within tolerance, and for f16 the same greedy
    continuation as transformers on the source model."""
    llama_cpp = pytest.importorskip("llama_cpp", reason=LLAMA_CPP_MISSING)
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(sharp_model_dir))
    ids, ref = source_logits(sharp_model_dir, [verdict_snippet])
    prompt = tok("I am an engineer. I love")["input_ids"]
    src = AutoModelForCausalLM.from_pretrained(str(sharp_model_dir), dtype=torch.float32)
    expected = src.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt) :].tolist()
    for gguf_type in ("f16", "q8_0"):
        llm = llama_cpp.Llama(
            model_path=str(gguf_files[gguf_type]), n_ctx=256, logits_all=True, verbose=False, n_threads=2
        )
        assert llm.token_bos() == tok.bos_token_id and llm.token_eos() == tok.eos_token_id
        for text in sample_texts:  # special=True: parse "<s>" etc. as transformers does
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text)["input_ids"], text
        llm.eval(ids[0])
        got = torch.from_numpy(np.asarray(llm.scores[: len(ids[0])], dtype=np.float32))
        assert rel_err(got, ref[0]) < tolerance[gguf_type] * 2, gguf_type
        if gguf_type == "f16":
            llm.reset()
            gen = []
            for t in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0):
                gen.append(t)
                if len(gen) == len(expected):
                    break
            assert gen == expected


def test_gguf_runs_in_llama_cpp_llama_vocab(tmp_path, llama_bpe_model_dir, sample_texts):
    llama_cpp = pytest.importorskip("llama_cpp", reason=LLAMA_CPP_MISSING)
    from transformers import AutoTokenizer

    path = write_gguf(llama_bpe_model_dir, tmp_path / "m.q8_0.gguf", "q8_0").path
    src = AutoTokenizer.from_pretrained(str(llama_bpe_model_dir))
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, verbose=False, vocab_only=True)
    for text in [*sample_texts, "  two leading spaces", "</s> after a special token"]:
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == src(text)["input_ids"], text
