"""`recipe plan` shows, per distributed stage, processes x nodes, the
strategy, memory per device (with its breakdown) and time per step -- the
plugin's plan_estimate, computed without torch."""

from __future__ import annotations

import json

from recipe_runner.launch import LaunchSpec
from recipe_runner_stages.common.model_shape import shape_from_config
from recipe_runner_stages.train.resource_estimate import Workload, memory_per_device, sharding_of

RECIPE = """
name: plan-estimate
seed: 7
launch: {processes: 2}
defaults: {device: cpu}
stages:
  - type: source
    params:
      sources:
        - {path: "${paths.data}/the-verdict.txt", split_by: blank_lines}
  - type: tokenize
    params: {train: {algorithm: bpe, vocab_size: 512}}
  - type: pack
    params: {max_seq_length: 64}
  - type: init
    params:
      model_type: llama
      vocab_size: 512
      config: {num_hidden_layers: 2, hidden_size: 32, intermediate_size: 64, num_attention_heads: 2,
               max_position_embeddings: 64}
  - type: pretrain
    params: {max_steps: 6, per_device_train_batch_size: 4}
"""


def test_plan_shows_the_estimate_of_a_distributed_stage(tmp_path, recipe_cli, write) -> None:
    recipe = write(tmp_path / "r.yaml", RECIPE)
    proc = recipe_cli("plan", str(recipe), "--workdir", str(tmp_path / "wd"), env={"COLUMNS": "80"}, check=True)
    block = proc.stdout[proc.stdout.index("pretrain: 2 processes x 1 node, ddp") :].splitlines()
    assert block[1].startswith("  memory/device ~") and "(peak: forward; fp32, full, cpu)" in block[1]
    assert "params" in block[2] and "grads" in block[2] and "optimizer" in block[2]
    assert any(line.startswith("  time/step ~") for line in block)
    assert any("H100" in line and "MFU" in line for line in block)
    assert all(len(line) <= 80 for line in block), block

    as_json = recipe_cli("plan", str(recipe), "--workdir", str(tmp_path / "wd"), "--json", check=True)
    pretrain = next(s for s in json.loads(as_json.stdout) if s["name"] == "pretrain")
    assert (pretrain["launch"]["processes"], pretrain["launch"]["world_size"]) == (2, 2)
    est = pretrain["launch"]["estimate"]
    config = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64}
    shape = shape_from_config({**config, "num_attention_heads": 2, "vocab_size": 512})
    assert shape is not None
    w = Workload(shape, 512, micro_batch=4, seq_len=64, precision="fp32", device="cpu")
    expected = memory_per_device(w, sharding_of(LaunchSpec(processes=2)))
    assert est["memory_per_device"]["total_bytes"] == expected["total_bytes"]
    assert est["memory_per_device"]["breakdown_bytes"] == expected["breakdown_bytes"]
    assert est["memory_per_device"]["breakdown_bytes"]["ddp_buckets"] > 0
    assert not any(s["name"] == "tokenize" and "launch" in s for s in json.loads(as_json.stdout))

    zero3 = recipe_cli(
        "plan",
        str(recipe),
        "--workdir",
        str(tmp_path / "wd"),
        "--json",
        "--set",
        "launch.strategy=deepspeed",
        "--set",
        "launch.preset=zero3",
        check=True,
    )
    sharded = next(s for s in json.loads(zero3.stdout) if s["name"] == "pretrain")["launch"]["estimate"]
    assert sharded["strategy"] == "zero3"
    # fp32 under DeepSpeed: two fp32 moments per parameter (no separate master copy), sharded over 2 ranks
    assert sharded["memory_per_device"]["breakdown_bytes"]["optimizer_states"] * 2 == 8 * sharded["parameters"]


def test_plan_estimate_imports_no_heavy_library(tmp_path, write, cli_imports) -> None:
    recipe = write(tmp_path / "r.yaml", RECIPE)
    out = cli_imports(["plan", str(recipe), "--workdir", str(tmp_path / "wd")])
    assert "memory/device" in out.stdout, out.stdout + out.stderr
    modules = out.modules
    assert not modules & {"torch", "transformers", "datasets", "trl", "peft", "accelerate"}
