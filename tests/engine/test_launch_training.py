"""Data-parallel pretraining launched by `recipe run` itself on CPU (gloo):
2 processes of per-device batch 2 follow the loss curve of 1 process of batch
4, step by step, under DDP and under FSDP2 (parameters sharded, FSDP
checkpoints resumed, a full safetensors model saved); the launch presets reach
the Trainer as DeepSpeed / FSDP configs.  What cannot run on CPU (ZeRO, FSDP
offload) is refused: tests/stages/train/test_train_cpu_fsdp.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _losses(wd: Path, fingerprint: str) -> dict[int, float]:
    history = wd / "ddp-tiny" / "stages" / f"pretrain-{fingerprint[:12]}" / "outputs" / "model" / "trainer_history.json"
    return {h["step"]: h["loss"] for h in json.loads(history.read_text()) if "loss" in h}


def test_two_processes_follow_the_loss_curve_of_one_with_the_same_global_batch(
    recipe_cli, status_json, tiny_pretrain_recipe, tmp_path
):
    recipe, wd = tiny_pretrain_recipe, tmp_path / "runs"
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


_BATCH_2 = "stages.pretrain.params.per_device_train_batch_size=2"


def _run(recipe_cli, recipe: Path, wd: Path, *sets: str):
    return recipe_cli("run", str(recipe), "--workdir", str(wd), *sets)


def _model_dir(wd: Path, fingerprint: str) -> Path:
    return wd / "ddp-tiny" / "stages" / f"pretrain-{fingerprint[:12]}" / "outputs" / "model"


def test_fsdp_on_cpu_shards_follows_one_process_and_resumes_its_checkpoints(
    recipe_cli, status_json, write, tmp_path, tiny_pretrain_recipe
):
    """FSDP2 in 2 gloo processes: every parameter a DTensor, rank 0 holding half of the values; the
    run fails after step 6 (its checkpoint-6 path is taken by a file), the same command resumes from the
    FSDP checkpoint-3; its losses follow the 1-process run of the same global batch and its weights are a
    full safetensors model loadable in one process.  Measured: losses within 1.5e-7 (relative) of one
    process, bit-identical to DDP's (float32 sums of 4 rows in another order); weights within 6e-8.  The
    bounds (1e-5, 1e-6) leave that margin; gradients summed instead of averaged (measured as twice the
    learning rate) move the losses by 1e-3 at step 3 and 2e-2 at step 6."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from recipe_runner_stages.train.checkpoints import checkpoint_is_complete

    recipe = write(tmp_path / "r.yaml", tiny_pretrain_recipe.read_text().replace("save_steps: 100", "save_steps: 3"))
    wd = tmp_path / "runs"
    one = ("--set", "launch.processes=1")
    fsdp = ("--set", "launch.processes=2", "--set", "launch.strategy=fsdp", "--set", _BATCH_2)
    assert _run(recipe_cli, recipe, wd, *one).returncode == 0
    key = status_json(recipe, wd, *fsdp)["stages"][-1]["fingerprint"]  # the data stages are done: known
    blocker = wd / "ddp-tiny" / "checkpoints" / f"pretrain-{key[:12]}" / "checkpoint-6"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("")
    proc = _run(recipe_cli, recipe, wd, *fsdp)
    assert proc.returncode != 0 and "FileExistsError" in proc.stderr, proc.stderr
    assert checkpoint_is_complete(blocker.parent / "checkpoint-3")
    assert (blocker.parent / "checkpoint-3" / "pytorch_model_fsdp.bin").is_file()  # accelerate's FSDP layout
    _take_a_finished_checkpoint(recipe_cli, status_json, recipe, wd, fsdp, blocker.parent / "checkpoint-3")
    blocker.unlink()
    proc = _run(recipe_cli, recipe, wd, *fsdp)
    assert proc.returncode == 0, proc.stderr

    entry, base = status_json(recipe, wd, *fsdp)["stages"][-1], status_json(recipe, wd, *one)["stages"][-1]
    m = entry["metrics"]
    assert m["strategy"] == "fsdp" and m["world_size"] == 2 and m["resumed_from_step"] == 3
    assert m["fsdp_sharded_tensors"] == m["fsdp_tensors"] > 0
    assert 2 * m["fsdp_parameters_this_rank"] == m["fsdp_parameters"] == m["num_parameters"]
    curve, reference = _losses(wd, entry["fingerprint"]), _losses(wd, base["fingerprint"])
    assert sorted(curve) == sorted(reference) == [1, 2, 3, 4, 5, 6]
    for step, loss in reference.items():
        assert curve[step] == pytest.approx(loss, rel=1e-5), step

    model = AutoModelForCausalLM.from_pretrained(str(_model_dir(wd, entry["fingerprint"])), dtype=torch.float32)
    assert model.num_parameters() == m["num_parameters"]
    state = model.state_dict()
    for name, weight in load_file(str(_model_dir(wd, base["fingerprint"]) / "model.safetensors")).items():
        torch.testing.assert_close(state[name], weight, rtol=0, atol=1e-6, msg=name)


def _take_a_finished_checkpoint(recipe_cli, status_json, recipe: Path, wd: Path, fsdp: tuple[str, ...], ckpt: Path):
    """A run of max_steps 3 that finds an FSDP checkpoint-3 (as when killed after its last checkpoint, before
    the commit) takes it as it is: the Trainer, which has not trained, evaluates and saves the sharded model
    (prepared with an optimizer first), and the output holds the checkpoint's weights."""
    import shutil

    from safetensors.torch import load_file

    three = (*fsdp, "--set", "stages.pretrain.params.max_steps=3")
    key = status_json(recipe, wd, *three)["stages"][-1]["fingerprint"]
    shutil.copytree(ckpt, wd / "ddp-tiny" / "checkpoints" / f"pretrain-{key[:12]}" / ckpt.name)
    proc = _run(recipe_cli, recipe, wd, *three)
    assert proc.returncode == 0, proc.stderr
    m = status_json(recipe, wd, *three)["stages"][-1]["metrics"]
    assert m["global_step"] == m["resumed_from_step"] == 3 and m["strategy"] == "fsdp" and "eval_loss" in m
    assert list(m).index("global_step") < list(m).index("strategy")  # the headline metrics come first
    saved = load_file(str(_model_dir(wd, key) / "model.safetensors"))
    for name, weight in load_file(str(ckpt / "model.safetensors")).items():
        assert saved[name].equal(weight), name


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


POST_TRAINING = """
name: post-fsdp
seed: 7
defaults: {{cpu_threads: 1, device: cpu, precision: fp32, max_steps: 4, logging_steps: 1, save_steps: 100,
            per_device_train_batch_size: 4, per_device_eval_batch_size: 1, model_name_or_path: "{model}"}}
stages:
  - type: sft
    name: sft_full
    params: {{data_path: "{data}/instruction-data.json", format: alpaca, method: full, test_tail: 1060,
             max_length: 128, learning_rate: 1.0e-3, eval_fraction: 0.2, num_samples: 2, sample_max_new_tokens: 8}}
  - type: sft
    name: sft_lora
    params: {{data_path: "{data}/instruction-data.json", format: alpaca, method: lora, merge: true,
             lora: {{r: 4, alpha: 8, dropout: 0.0}}, test_tail: 1060, max_length: 128, learning_rate: 1.0e-2,
             eval_fraction: 0.2, num_samples: 2, sample_max_new_tokens: 8}}
  - type: reward
    params: {{data_path: "{prefs}", max_length: 128, learning_rate: 1.0e-3, eval_fraction: 0.2}}
  - type: dpo
    params: {{data_path: "{prefs}", max_length: 128, learning_rate: 1.0e-4, eval_fraction: 0.2}}
  - type: dpo
    name: dpo_lora
    params: {{data_path: "{prefs}", max_length: 128, learning_rate: 1.0e-2, eval_fraction: 0.2,
             lora: {{r: 4, alpha: 8, dropout: 0.0}}}}
"""


def _preference_pairs(data_dir: Path, out: Path) -> Path:
    """40 pairs a tiny model can tell apart: prose from the-verdict chosen over a run of digits."""
    import random

    words = (data_dir / "the-verdict.txt").read_text().split()
    instructions = [r["instruction"] for r in json.loads((data_dir / "instruction-data.json").read_text())]
    rng = random.Random(0)
    with out.open("w") as f:
        for i in range(40):
            start = rng.randrange(0, len(words) - 12)
            pair = {
                "prompt": instructions[i][:60] + "\nAnswer:",
                "chosen": " " + " ".join(words[start : start + 8]),
                "rejected": " " + " ".join(str(rng.randrange(10)) for _ in range(10)),
            }
            f.write(json.dumps(pair) + "\n")
    return out


#: the stages of POST_TRAINING: (output slot loaded back, transformers class that loads it)
_POST_OUTPUTS = {
    "sft_full": ("model", "AutoModelForCausalLM"),
    "sft_lora": ("model", "AutoModelForCausalLM"),
    "reward": ("reward_model", "AutoModelForSequenceClassification"),
    "dpo": ("model", "AutoModelForCausalLM"),
    "dpo_lora": ("model", "AutoModelForCausalLM"),
}


def test_post_training_stages_run_fsdp_on_cpu_and_follow_one_process(
    recipe_cli, status_json, write, tmp_path, data_dir, tiny_model_dir
):
    """sft (full, LoRA merged), reward and dpo (full, LoRA merged) in 2 FSDP2 processes of batch 2 against
    1 process of batch 4 (held-out batch 1 in both: a batch's mean loss weights rows by their tokens): each
    stage shards (rank 0 holds about half the values, DTensors), its losses and held-out numbers before and
    after training follow the 1-process run, and its saved model is a full checkpoint one process loads, with
    the 1-process run's weights.  Measured: every number within 3e-6 relative, but for DPO rewards near 0
    (2.5e-4: 3e-7 absolute; a reward is beta times a sum of float32 log-probabilities), so rel 1e-5, abs 5e-6;
    weights within 3.5e-6 (Adam divides float32 summation noise in small gradients by their small second
    moments), so 2e-5, while 4 steps move them by 2.5e-4 (dpo) to 2e-2 (LoRA merged)."""
    import torch
    import transformers
    from safetensors.torch import load_file

    prefs = _preference_pairs(data_dir, tmp_path / "prefs.jsonl")
    recipe = write(tmp_path / "r.yaml", POST_TRAINING.format(model=tiny_model_dir, data=data_dir, prefs=prefs))
    wd = tmp_path / "runs"
    one = ("--set", "launch.processes=1")
    fsdp = (
        "--set",
        "launch.processes=2",
        "--set",
        "launch.strategy=fsdp",
        "--set",
        "defaults.per_device_train_batch_size=2",
    )
    for sets in (one, fsdp):  # 5 launches of 2 processes: more than recipe_cli's default 120 s on a busy machine
        proc = recipe_cli("run", str(recipe), "--workdir", str(wd), *sets, timeout=600)
        assert proc.returncode == 0, proc.stderr
    initial = load_file(str(tiny_model_dir / "model.safetensors"))
    runs = {sets: {e["name"]: e for e in status_json(recipe, wd, *sets)["stages"]} for sets in (one, fsdp)}
    for name, (slot, loader) in _POST_OUTPUTS.items():
        assert runs[one][name]["status"] == runs[fsdp][name]["status"] == "done", name
        m, base = runs[fsdp][name]["metrics"], runs[one][name]["metrics"]
        assert m["strategy"] == "fsdp" and m["world_size"] == 2 and m["fsdp_sharded_tensors"] > 0, name
        assert m["fsdp_parameters_this_rank"] < 0.6 * m["fsdp_parameters"], name
        keys = list(m)
        assert keys.index("train_loss") < keys.index("strategy"), name  # the headline metrics come first
        numbers = [k for k, v in base.items() if isinstance(v, float)]
        assert {"train_loss", "loss_first", "loss_last"} <= set(numbers), name
        for key in numbers:
            assert m[key] == pytest.approx(base[key], rel=1e-5, abs=5e-6), (name, key)
        out = wd / "post-fsdp" / "stages" / f"{name}-{runs[fsdp][name]['fingerprint'][:12]}" / "outputs" / slot
        ref = wd / "post-fsdp" / "stages" / f"{name}-{runs[one][name]['fingerprint'][:12]}" / "outputs" / slot
        model = getattr(transformers, loader).from_pretrained(str(out), dtype=torch.float32)
        state, trained = model.state_dict(), load_file(str(ref / "model.safetensors"))
        assert sorted(load_file(str(out / "model.safetensors"))) == sorted(trained), name
        for key, weight in trained.items():
            torch.testing.assert_close(state[key], weight, rtol=0, atol=2e-5, msg=f"{name}: {key}")
        moved = max((state[k] - w).abs().max().item() for k, w in initial.items() if k in state)
        assert moved > 1e-4, name  # trained: the base model's weights would not pass for the trained ones
