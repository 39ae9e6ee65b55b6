"""export: a sharded HF directory that reloads with identical logits, a model
card with lineage (read from the typed Lineage), eval results and the sample
generations with how they were decoded, the GGUF copied, every file with the
permissions the umask gives, the input model's facts kept, hub push failing
clearly offline."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from recipe_runner import MAX_POSITIONS, Lineage, StageRef, UpstreamRecord
from recipe_runner.artifacts import EVAL_REPORT, GGUF_FILE, MODEL, Artifact
from recipe_runner.runner import collect_outputs
from recipe_runner.stage import StageContext, StageError
from recipe_runner.testing import run_stage
from recipe_runner_stages.deploy.export.stage import ExportStage


@pytest.fixture(scope="module")
def model_art(tiny_model_dir) -> Artifact:
    return Artifact(MODEL, tiny_model_dir)


def _gguf(path):
    import numpy as np
    from gguf import GGUFWriter

    path.mkdir(parents=True)
    w = GGUFWriter(str(path / "tiny-q8_0.gguf"), "llama")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


LINEAGE = Lineage(
    recipe="tinysolar-upscale",
    recipe_file="recipes/tinysolar_upscale.yaml",
    seed=0,
    stage=StageRef("export", "export", "0123456789abcdef"),
    upstream=(
        UpstreamRecord("web", "source", "abc123def4567890", {"documents": 1234}),
        UpstreamRecord("pretrain", "pretrain", "fedcba9876543210", {"eval_loss": 3.21, "loss_curve": [[1, 2.0]]}),
    ),
)

REPORT = {
    "metrics": {"perplexity": 12.5, "truthfulqa_mc2_local/acc": 0.41},
    "tasks": {"truthfulqa_mc2_local": {"num_fewshot": 0, "limit": 20}},
    "samples": [
        {"prompt": "I am an engineer. I love", "sample": 1, "completion": " building things"},
        {"prompt": "I am an engineer. I love", "sample": 2, "completion": " my cat"},
        {"prompt": "I am an engineer. I love", "sample": 3, "completion": " ```code```"},
    ],
    "generation": {
        "do_sample": True,
        "temperature": 0.8,
        "top_k": None,
        "top_p": 0.95,
        "repetition_penalty": 1.2,
        "num_samples": 3,
        "seed": 42,
    },
}


@pytest.fixture(scope="module")
def exported(model_art, tmp_path_factory) -> dict[str, Artifact]:
    """The export of the tiny model sharded at 100KB, with an eval report, a GGUF and a lineage."""
    tmp_path = tmp_path_factory.mktemp("export")
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    (report_dir / "report.json").write_text(json.dumps(REPORT))
    params = ExportStage.Params.model_validate({"max_shard_size": "100KB", "license": "apache-2.0"})
    ctx = StageContext(
        name="export",
        params=params,
        inputs={
            "model": model_art,
            "report": Artifact(EVAL_REPORT, report_dir),
            "gguf": Artifact(GGUF_FILE, _gguf(tmp_path / "gguf")),
        },
        output_dir=tmp_path / "out",
        checkpoint_dir=tmp_path / "ckpt",
        seed=0,
        log=logging.getLogger("test.export"),
        recipe_name="tinysolar-upscale",
        lineage=LINEAGE,
    )
    return collect_outputs(ExportStage, params, ctx, ExportStage().run(ctx))


def test_export_reloads_identically(model_art, exported):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = exported["model"].path
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    assert exported["model"].meta["gguf"] == "tiny-q8_0.gguf" and (out / "tiny-q8_0.gguf").is_file()
    for f in ("config.json", "generation_config.json", "tokenizer.json", "eval_report.json", "lineage.json"):
        assert (out / f).is_file(), f
    assert json.loads((out / "lineage.json").read_text()) == LINEAGE.to_json()

    src = AutoModelForCausalLM.from_pretrained(str(model_art.path)).eval()
    exp = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = AutoTokenizer.from_pretrained(str(out))("I am an engineer. I love", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(src(ids).logits, exp(ids).logits)


def test_the_card_records_lineage_results_and_samples(exported):
    card = (exported["model"].path / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    assert "license: apache-2.0" in card and "tinysolar-upscale" in card
    assert "| truthfulqa_mc2_local | " not in card and "| truthfulqa_mc2_local/acc | 0.41 |" in card
    assert "`abc123def4567890`" in card and "documents=1234" in card and "eval_loss=3.21" in card
    assert "building things" in card and "tiny-q8_0.gguf" in card
    assert (
        "Sample generations (sampled: temperature 0.8, top-p 0.95, repetition penalty 1.2, seed 42; 3 per prompt)"
        in card
    )
    assert card.count("```text\nI am an engineer. I love") == 3 and "I love '''code'''" in card


def test_every_exported_file_has_the_permissions_the_umask_gives(exported):
    """The safetensors shards too, which the library writes 0600."""
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in exported["model"].path.iterdir()}
    assert sum(name.endswith(".safetensors") for name in modes) > 1
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)


def test_a_card_says_greedy_samples_are_greedy():
    from recipe_runner_stages.deploy.export.model_card import decoding_summary

    assert decoding_summary({"do_sample": False, "temperature": 0.8, "num_samples": 1}) == "greedy decoding"
    assert decoding_summary({}) == ""


def test_export_keeps_the_input_models_facts():
    params = ExportStage.Params()
    facts = ExportStage.output_facts(params, {"model": {MAX_POSITIONS: 64}, "report": {}})
    assert facts == {"model": {MAX_POSITIONS: 64}}
    assert ExportStage.output_facts(params, {}) == {"model": {}}


def test_push_to_hub_offline_fails_clearly(model_art, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StageError, match="offline"):
        run_stage(ExportStage, {"push_to_hub": {"repo_id": "me/tiny"}}, inputs={"model": model_art}, workdir=tmp_path)
    assert (tmp_path / "output" / "model" / "model.safetensors").is_file()  # the export itself is kept
