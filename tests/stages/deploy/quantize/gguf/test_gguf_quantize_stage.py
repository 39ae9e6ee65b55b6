"""The quantize stage's gguf method: the file carries the recipe's lineage
(typed Lineage -> recipe_runner.* keys), sizes and perplexity before/after
equal independent measurements, the file has the permissions the umask gives."""

from __future__ import annotations

import json
import logging
import math
import os
import stat
from pathlib import Path

import pytest

from recipe_runner import GGUF_FILE, Lineage, StageRef, UpstreamRecord
from recipe_runner.artifacts import DATASET, MODEL, Artifact
from recipe_runner.runner import collect_outputs
from recipe_runner.stage import StageContext
from recipe_runner_stages.deploy.quantize.gguf.reader import read_gguf_metadata
from recipe_runner_stages.deploy.quantize.stage import QuantizeStage


def _independent_perplexity(model, tok, texts, n_tokens):
    """exp(loss) from transformers' own loss over the first n_tokens of the
    texts joined by EOS: the stage's recipe, computed another way."""
    import torch

    stream = []
    for t in texts:
        stream += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([stream[:n_tokens]])
    with torch.no_grad():
        return math.exp(float(model(ids, labels=ids).loss))


@pytest.fixture(scope="module")
def gguf_run(tmp_path_factory, sharp_model_dir, verdict_dataset) -> tuple[Artifact, dict]:
    """(the gguf artifact, the metrics) of the stage run on the sharpened tiny model with a lineage."""
    tmp_path = tmp_path_factory.mktemp("to_gguf")
    lineage = Lineage(
        recipe="tiny-demo",
        recipe_file="tiny-demo.yaml",
        seed=7,
        stage=StageRef("to_gguf", "quantize", "f" * 64),
        upstream=(UpstreamRecord("pretrain", "pretrain", "a" * 64, {"loss": 1.5}),),
    )
    params = QuantizeStage.Params.model_validate(
        {"method": "gguf", "gguf_type": "q8_0", "max_eval_tokens": 256, "eval_seq_len": 256, "max_new_tokens": 8}
    )
    model_art = Artifact(MODEL, sharp_model_dir, producer="pretrain", fingerprint="a" * 64)
    ctx = StageContext(
        name="to_gguf",
        params=params,
        inputs={"model": model_art, "dataset": Artifact(DATASET, verdict_dataset)},
        output_dir=tmp_path / "out",
        checkpoint_dir=tmp_path / "ckpt",
        seed=7,
        log=logging.getLogger("test.quantize"),
        recipe_name="tiny-demo",
        lineage=lineage,
    )
    (tmp_path / "ckpt").mkdir()
    outputs = collect_outputs(QuantizeStage, params, ctx, QuantizeStage().run(ctx))
    return outputs["gguf"], ctx.metrics


def test_the_gguf_carries_the_lineage(gguf_run):
    from gguf import GGUFReader

    art, _ = gguf_run
    assert art.kind == GGUF_FILE
    files = list(Path(art.path).glob("*.gguf"))
    assert [f.name for f in files] == ["model.q8_0.gguf"] == [art.meta["file"]]
    md = read_gguf_metadata(files[0])
    assert md["recipe_runner.recipe"] == "tiny-demo"
    assert md["recipe_runner.stage_fingerprint"] == "f" * 64
    assert md["recipe_runner.source_model_fingerprint"] == "a" * 64
    assert json.loads(md["recipe_runner.lineage"])["upstream"][0]["name"] == "pretrain"
    assert "tiny-demo" in md["general.description"] and md["general.name"] == "tiny-demo"
    assert GGUFReader(str(files[0])).fields["recipe_runner.upstream"].contents() == [f"pretrain:pretrain:{'a' * 64}"]


def test_sizes_and_perplexities_equal_independent_measurements(gguf_run, sharp_model_dir, verdict_dataset):
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer

    art, m = gguf_run
    gguf_file = Path(art.path) / art.meta["file"]
    src_size = sum(f.stat().st_size for f in sharp_model_dir.glob("*.safetensors"))
    assert m["source_size_bytes"] == src_size and m["size_bytes"] == gguf_file.stat().st_size
    assert m["compression_ratio"] == pytest.approx(src_size / gguf_file.stat().st_size, rel=1e-3)
    assert m["compression_ratio"] > 3  # fp32 -> ~8.5 bits per weight
    assert m["eval_split"] == "validation" and m["eval_tokens"] == 256

    tok = AutoTokenizer.from_pretrained(str(sharp_model_dir))
    texts = [t for t in load_from_disk(str(verdict_dataset))["validation"]["text"] if t]
    src = AutoModelForCausalLM.from_pretrained(str(sharp_model_dir), dtype=torch.float32)
    q = AutoModelForCausalLM.from_pretrained(str(art.path), gguf_file=gguf_file.name, dtype=torch.float32)
    assert m["perplexity_before"] == pytest.approx(_independent_perplexity(src, tok, texts, 256), rel=1e-3)
    assert m["perplexity_after"] == pytest.approx(_independent_perplexity(q, tok, texts, 256), rel=1e-3)
    assert m["perplexity_delta"] == pytest.approx(m["perplexity_after"] - m["perplexity_before"], abs=1e-3)
    assert abs(m["perplexity_delta"]) / m["perplexity_before"] < 0.02
    assert isinstance(m["sample_before"], str) and isinstance(m["sample_after"], str)
    assert m["prompt"] == "I am an engineer. I love"


def test_the_gguf_has_the_permissions_the_umask_gives(gguf_run):
    art, _ = gguf_run
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((Path(art.path) / art.meta["file"]).stat().st_mode) == 0o666 & ~umask
