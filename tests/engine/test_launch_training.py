"""Data-parallel pretraining launched by `recipe run` itself on CPU (gloo):
2 processes of per-device batch 2 follow the loss curve of 1 process of batch
4, step by step; FSDP / ZeRO are refused on CPU instead of silently running
DDP; the launch presets reach the Trainer as DeepSpeed / FSDP configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

RECIPE = """
name: ddp-tiny
seed: 7
defaults: {{cpu_threads: 1}}
stages:
  - type: source
    params:
      sources:
        - {{path: "{data}/the-verdict.txt", split_by: blank_lines}}
      validation: 0.1
  - type: tokenize
    params: {{train: {{algorithm: bpe, vocab_size: 512}}}}
  - type: pack
    params: {{max_seq_length: 64}}
  - type: init
    params:
      model_type: llama
      config: {{num_hidden_layers: 2, hidden_size: 32, intermediate_size: 64, num_attention_heads: 2,
               max_position_embeddings: 64}}
  - type: pretrain
    params: {{max_steps: 6, per_device_train_batch_size: 4, learning_rate: 3.0e-3, warmup_steps: 2,
             logging_steps: 1, save_steps: 100}}
"""


def _losses(wd: Path, fingerprint: str) -> dict[int, float]:
    history = wd / "ddp-tiny" / "stages" / f"pretrain-{fingerprint[:12]}" / "outputs" / "model" / "trainer_history.json"
    return {h["step"]: h["loss"] for h in json.loads(history.read_text()) if "loss" in h}


def test_two_processes_follow_the_loss_curve_of_one_with_the_same_global_batch(
    recipe_cli, status_json, write, tmp_path, data_dir
):
    recipe, wd = write(tmp_path / "r.yaml", RECIPE.format(data=data_dir)), tmp_path / "runs"
    curves, metrics = {}, {}
    for n, batch in ((1, 4), (2, 2)):
        sets = [
            "--set",
            f"launch.processes={n}",
            "--set",
            f"stages.pretrain.params.per_device_train_batch_size={batch}",
        ]
        proc = recipe_cli("run", str(recipe), "--workdir", str(wd), *sets)
        assert proc.returncode == 0, proc.stderr
        entry = status_json(recipe, wd, *sets)["stages"][-1]
        curves[n], metrics[n] = _losses(wd, entry["fingerprint"]), entry["metrics"]
    assert metrics[2]["world_size"] == 2 and "world_size" not in metrics[1]
    assert sorted(curves[1]) == sorted(curves[2]) == [1, 2, 3, 4, 5, 6]
    for step, loss in curves[1].items():
        assert curves[2][step] == pytest.approx(loss, rel=1e-4), step
    assert curves[1][6] < curves[1][1]  # it trains


def test_fsdp_on_cpu_is_refused_not_silently_ddp(recipe_cli, write, tmp_path, data_dir):
    recipe = write(tmp_path / "r.yaml", RECIPE.format(data=data_dir))
    sets = ["--set", "launch.processes=2", "--set", "launch.strategy=fsdp"]
    proc = recipe_cli("run", str(recipe), "--workdir", str(tmp_path / "runs"), *sets)
    assert proc.returncode != 0
    assert re.search(r"rank [01] of 2 failed: strategy fsdp needs GPUs", proc.stderr), proc.stderr


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ({"processes": 2, "strategy": "deepspeed", "preset": "zero3"}, ("deepspeed", 3)),
        ({"processes": 2, "strategy": "deepspeed"}, ("deepspeed", 2)),
        ({"processes": 2, "strategy": "deepspeed", "config": {"zero_optimization": {"stage": 1}}}, ("deepspeed", 1)),
        ({"processes": 2, "strategy": "fsdp", "preset": "fsdp_shard_grad_op"}, ("fsdp", False)),
        ({"processes": 2, "strategy": "fsdp"}, ("fsdp", True)),
    ],
)
def test_launch_strategies_reach_the_trainer_arguments(block, expected):
    from recipe_runner.launch import LaunchSpec
    from recipe_runner_stages.train.pretrain.params import PretrainParams
    from recipe_runner_stages.train.trainer_args import _distributed_kwargs

    kw = _distributed_kwargs(PretrainParams(), LaunchSpec.model_validate(block), "cuda")
    which, value = expected
    if which == "deepspeed":
        assert kw["deepspeed"]["zero_optimization"]["stage"] == value
        if "config" not in block:  # a shipped preset leaves the batch sizes to the Trainer
            assert kw["deepspeed"]["train_micro_batch_size_per_gpu"] == "auto"
    else:
        assert kw["fsdp"] is True and kw["fsdp_config"]["reshard_after_forward"] is value
        assert kw["fsdp_config"]["version"] == 2
    assert kw["ddp_find_unused_parameters"] is False


def test_raw_trainer_configs_still_win_over_the_launch_block():
    from recipe_runner.launch import LaunchSpec
    from recipe_runner_stages.train.pretrain.params import PretrainParams
    from recipe_runner_stages.train.trainer_args import _distributed_kwargs

    p = PretrainParams(deepspeed={"zero_optimization": {"stage": 2}})
    kw = _distributed_kwargs(p, LaunchSpec(processes=2, strategy="deepspeed", preset="zero3"), "cuda")
    assert kw == {"deepspeed": {"zero_optimization": {"stage": 2}}}
