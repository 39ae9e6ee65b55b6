"""The CPU int8 path (torchao): saved with save_pretrained, reloaded with
from_pretrained on this CPU, close to the source, smaller on disk, every file
with the permissions the umask gives."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest


@pytest.mark.parametrize("scheme,tol", [("weight_only", 0.05), ("dynamic_activation", 0.1)])
def test_int8_reloads_close_and_smaller(scheme, tol, tmp_path, sharp_model_dir, verdict_dataset, rel_err):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipe_runner.artifacts import DATASET, MODEL, QUANTIZED_MODEL, Artifact
    from recipe_runner.testing import run_stage
    from recipe_runner_stages.deploy.quantize.stage import QuantizeStage

    res = run_stage(
        QuantizeStage,
        {"method": "int8", "int8_scheme": scheme, "max_eval_tokens": 512, "eval_seq_len": 128, "max_new_tokens": 4},
        inputs={"model": Artifact(MODEL, sharp_model_dir), "dataset": Artifact(DATASET, verdict_dataset)},
        workdir=tmp_path,
    )
    art = res.outputs["model"]
    assert art.kind == QUANTIZED_MODEL and art.meta["format"] == f"torchao-int8-{scheme.replace('_', '-')}"
    out = Path(art.path)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "torchao"

    # a user's reload: plain from_pretrained on the CPU, tokenizer from the same directory
    q = AutoModelForCausalLM.from_pretrained(str(out), device_map="cpu")
    tok = AutoTokenizer.from_pretrained(str(out))
    w = q.model.layers[0].mlp.down_proj.weight
    assert type(w).__name__ == "Int8Tensor" and w.qdata.dtype == torch.int8  # stored int8, not dequantized

    src = AutoModelForCausalLM.from_pretrained(str(sharp_model_dir), dtype=torch.float32)
    ids = torch.tensor(
        [tok("I HAD always thought Jack Gisburn rather a cheap genius--though a good fellow")["input_ids"]]
    )
    with torch.no_grad():
        err = rel_err(q(ids).logits, src(ids).logits)
    assert 0 < err < tol

    src_size = sum(f.stat().st_size for f in sharp_model_dir.glob("*.safetensors"))
    q_size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    assert q_size < 0.75 * src_size  # linears at 1 byte/weight instead of 4 (embeddings stay fp32)
    m = res.metrics
    assert m["size_bytes"] == q_size and m["source_size_bytes"] == src_size
    assert m["compression_ratio"] == pytest.approx(src_size / q_size, rel=1e-3)
    assert m["eval_tokens"] == 512 and m["eval_split"] == "validation"
    assert abs(m["perplexity_delta"]) < 0.05 * m["perplexity_before"]
    assert {"sample_before", "sample_after", "perplexity_after"} <= set(m)


def test_int8_without_dataset_reports_sizes_and_samples(tmp_path, tiny_model_dir):
    from recipe_runner.artifacts import MODEL, Artifact
    from recipe_runner.testing import run_stage
    from recipe_runner_stages.deploy.quantize.stage import QuantizeStage

    res = run_stage(
        QuantizeStage,
        {"method": "int8", "max_new_tokens": 4},
        inputs={"model": Artifact(MODEL, tiny_model_dir)},
        workdir=tmp_path,
    )
    m = res.metrics
    assert "perplexity_before" not in m and m["compression_ratio"] > 1
    assert isinstance(m["sample_after"], str)
    umask = os.umask(0o022)
    os.umask(umask)
    out = Path(res.outputs["model"].path)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()}
    assert "model.safetensors" in modes and modes == dict.fromkeys(modes, 0o666 & ~umask)  # written 0600 by the library


def test_perplexity_on_tokenized_and_packed_inputs(tmp_path, tiny_model_dir):
    """Token-id datasets are scored as they are: the stage's perplexity equals
    transformers' own loss on the same ids; ids outside the vocabulary are refused."""
    import math

    import torch
    from datasets import Dataset, DatasetDict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipe_runner.artifacts import MODEL, PACKED_DATASET, TOKENIZED_DATASET, Artifact
    from recipe_runner.stage import StageError
    from recipe_runner.testing import run_stage
    from recipe_runner_stages.deploy.quantize.stage import QuantizeStage

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ids = tok(
        "I HAD always thought Jack Gisburn rather a cheap genius--though a good fellow enough--so it was "
        "no great surprise to me to hear that, in the height of his glory, he had dropped his painting, "
        "married a rich widow, and established himself in a villa on the Riviera."
    )["input_ids"]
    rows = [ids[i : i + 32] for i in range(0, 64, 32)]
    DatasetDict(train=Dataset.from_dict({"input_ids": rows})).save_to_disk(str(tmp_path / "packed"))
    res = run_stage(
        QuantizeStage,
        {"method": "int8", "eval_seq_len": 64, "max_new_tokens": 0},
        inputs={"model": Artifact(MODEL, tiny_model_dir), "dataset": Artifact(PACKED_DATASET, tmp_path / "packed")},
        workdir=tmp_path / "run1",
    )
    flat = torch.tensor([rows[0] + rows[1]])  # packed rows are joined as they are (no EOS added)
    src = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    with torch.no_grad():
        expected = math.exp(float(src(flat, labels=flat).loss))
    assert res.metrics["eval_split"] == "train" and res.metrics["eval_tokens"] == 64
    assert res.metrics["perplexity_before"] == pytest.approx(expected, rel=1e-4)
    assert "sample_before" not in res.metrics  # max_new_tokens: 0 skips the sample

    DatasetDict(train=Dataset.from_dict({"input_ids": [[5, 6, 100000]], "num_tokens": [3]})).save_to_disk(
        str(tmp_path / "bad")
    )
    with pytest.raises(StageError, match="outside the model's vocabulary"):
        run_stage(
            QuantizeStage,
            {"method": "int8"},
            inputs={"model": Artifact(MODEL, tiny_model_dir), "dataset": Artifact(TOKENIZED_DATASET, tmp_path / "bad")},
            workdir=tmp_path / "run2",
        )
