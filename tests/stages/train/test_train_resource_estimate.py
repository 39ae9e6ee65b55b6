"""resource_estimate.py: memory per device against torch's measured peak of
one Trainer step on a CPU (tiny Llama built from a config, no download), the
sharding arithmetic of ZeRO / FSDP / offload by hand, LoRA's adapter count
against peft's, and time per step."""

from __future__ import annotations

from typing import Any

import pytest

from recipe_runner.launch import LaunchSpec
from recipe_runner.stage import PlanView
from recipe_runner_stages.common.model_shape import count_parameters, shape_from_config
from recipe_runner_stages.train.resource_estimate import (
    Workload,
    estimate,
    estimate_stage,
    memory_per_device,
    sharding_of,
    time_per_step,
)
from recipe_runner_stages.train.sft.params import SFTParams

#: a shape the activation coefficients were not fitted on (they come from h=256, i=688, 4 heads)
TINY = {
    "model_type": "llama",
    "num_hidden_layers": 3,
    "hidden_size": 192,
    "intermediate_size": 512,
    "num_attention_heads": 6,
    "num_key_value_heads": 3,
    "vocab_size": 3000,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
}


def _measured_peak(batch: int, seq: int, bf16: bool, checkpointing: bool, tmp_path: Any) -> int:
    """Peak bytes of CPU tensors (parameters, gradients, optimizer states,
    activations, temporaries) during the second of two training steps as the
    Trainer runs them: its AdamW, its accelerate-prepared model (bf16
    autocast), gradient clipping, gradients set to None after the step.
    Measured by torch's MemTracker, a dispatch mode that follows every
    tensor storage's lifetime (RSS would be noise)."""
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker
    from transformers import AutoModelForCausalLM, LlamaConfig, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**{k: v for k, v in TINY.items() if k != "model_type"}))
    args = TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, bf16=bf16, report_to="none", per_device_train_batch_size=batch
    )
    trainer = Trainer(model=model, args=args)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    prepared = trainer.accelerator.prepare_model(model)
    optimizer = trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    ids = torch.randint(0, TINY["vocab_size"], (batch, seq))

    def step() -> None:
        trainer.training_step(prepared, {"input_ids": ids, "labels": ids.clone()})
        trainer.accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        model.zero_grad(set_to_none=True)

    step()  # the first step creates the optimizer states
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        step()
    return int(tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"])


@pytest.mark.parametrize(
    ("precision", "checkpointing"), [("fp32", False), ("bf16", False), ("fp32", True)], ids=["fp32", "bf16", "ckpt"]
)
def test_memory_estimate_within_30_percent_of_measured_peak(precision: str, checkpointing: bool, tmp_path) -> None:
    batch, seq = 3, 96
    measured = _measured_peak(batch, seq, precision == "bf16", checkpointing, tmp_path)
    shape = shape_from_config(TINY)
    assert shape is not None
    w = Workload(shape, 3000, batch, seq, precision=precision, device="cpu", checkpointing=checkpointing)
    estimated = memory_per_device(w, sharding_of(LaunchSpec()))["total_bytes"]
    assert abs(estimated / measured - 1) < 0.30, (estimated, measured)


DDP_WORKER = """
import json, os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp

def worker(rank, port, config):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed._tools.mem_tracker import MemTracker
    from torch.nn.parallel import DistributedDataParallel
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**config))
    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:  # DDP's gradient buckets are allocated when it wraps the model
        ddp = DistributedDataParallel(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        tracker.track_external(optimizer)
        ids = torch.randint(0, config["vocab_size"], (3, 96))
        for _ in range(2):
            ddp(input_ids=ids, labels=ids).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tracker.reset_mod_stats()
    if rank == 0:
        print("PEAK", int(tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]))
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(worker, args=(int(sys.argv[1]), json.loads(sys.argv[2])), nprocs=2)
"""


def test_ddp_estimate_within_30_percent_of_measured_peak_in_two_processes(tmp_path) -> None:
    """Two gloo processes under DistributedDataParallel: rank 0's peak
    includes DDP's gradient buckets (as big as the gradients)."""
    import json
    import socket
    import subprocess
    import sys

    script = tmp_path / "ddp_peak.py"
    script.write_text(DDP_WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = json.dumps({k: v for k, v in TINY.items() if k != "model_type"})
    proc = subprocess.run([sys.executable, str(script), str(port), config], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = int(proc.stdout.split("PEAK")[-1].split()[0])
    shape = shape_from_config(TINY)
    assert shape is not None
    w = Workload(shape, 3000, 3, 96, precision="fp32", device="cpu")
    mem = memory_per_device(w, sharding_of(LaunchSpec(processes=2)))
    assert mem["breakdown_bytes"]["ddp_buckets"] == mem["breakdown_bytes"]["gradients"]
    assert abs(mem["total_bytes"] / measured - 1) < 0.30, (mem["total_bytes"], measured)


def test_parameter_count_matches_transformers() -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    for tied in (False, True):
        config = {**TINY, "tie_word_embeddings": tied}
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(
                LlamaConfig(**{k: v for k, v in config.items() if k != "model_type"})
            )
        shape = shape_from_config(config)
        assert shape is not None
        assert count_parameters(shape, 3000) == model.num_parameters()


def test_lora_adapter_count_matches_peft() -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    shape = shape_from_config(TINY)
    assert shape is not None
    for targets in ("all-linear", ["q_proj", "v_proj"]):
        with torch.device("meta"):
            base = AutoModelForCausalLM.from_config(LlamaConfig(**{k: v for k, v in TINY.items() if k != "model_type"}))
        peft_model = get_peft_model(base, LoraConfig(r=8, target_modules=targets, task_type="CAUSAL_LM"))
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        w = Workload(shape, 3000, 1, 8, method="lora", lora_rank=8, lora_targets=targets)
        assert memory_per_device(w, sharding_of(LaunchSpec()))["trainable_parameters"] == trainable


# a small shape whose parameter count is easy by hand:
# embeddings 100*64 + head 100*64 + 2 layers * (4*64*64 attention + 3*64*128 MLP + 2*64 norms) + 64 final norm
SMALL = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128}
SMALL |= {"num_attention_heads": 4, "vocab_size": 100, "tie_word_embeddings": False}
N = 12800 + 2 * (16384 + 24576 + 128) + 64  # 95040
LAYER = 16384 + 24576 + 128


def _state(launch: dict[str, Any], precision: str = "bf16", method: str = "full") -> dict[str, Any]:
    shape = shape_from_config(SMALL)
    assert shape is not None
    w = Workload(shape, 100, 1, 8, precision=precision, method=method, lora_rank=4, lora_dropout=False)
    return memory_per_device(w, sharding_of(LaunchSpec(**launch)))


def test_sharding_arithmetic_by_hand() -> None:
    assert count_parameters(shape_from_config(SMALL) or {}, 100) == N == 95040
    ddp = _state({"processes": 4})["breakdown_bytes"]  # torch AMP: fp32 weights, grads, 2 moments; DDP buckets
    assert (ddp["parameters"], ddp["gradients"], ddp["optimizer_states"], ddp["ddp_buckets"]) == (
        4 * N,
        4 * N,
        8 * N,
        4 * N,
    )
    assert ddp["autocast_weight_copies"] == 2 * (2 * (LAYER - 128) + 100 * 64)  # bf16 copies: projections, head
    assert ddp["step_temporaries"] == 4 * N  # foreach AdamW on a GPU: one fp32 copy
    z1 = _state({"processes": 4, "strategy": "deepspeed", "preset": "zero1"})["breakdown_bytes"]
    assert (z1["parameters"], z1["gradients"], z1["optimizer_states"]) == (2 * N, 2 * N, 12 * N // 4)
    z2 = _state({"processes": 4, "strategy": "deepspeed", "preset": "zero2"})["breakdown_bytes"]
    assert (z2["parameters"], z2["gradients"], z2["optimizer_states"]) == (2 * N, 2 * N // 4, 12 * N // 4)
    z3 = _state({"processes": 4, "strategy": "deepspeed", "preset": "zero3"})["breakdown_bytes"]
    gathered = 2 * N  # bf16: two layers (all of this 2-layer model) + embeddings and head
    assert (z3["parameters"], z3["gradients"], z3["optimizer_states"]) == (
        2 * N // 4 + gathered,
        2 * N // 4,
        12 * N // 4,
    )
    off = _state({"processes": 4, "strategy": "deepspeed", "preset": "zero3_offload"})
    assert off["breakdown_bytes"]["parameters"] == gathered and "optimizer_states" not in off["breakdown_bytes"]
    assert off["cpu_offload_bytes"] == 12 * N // 4 + 2 * N // 4
    fsdp = _state({"processes": 4, "strategy": "fsdp", "preset": "fsdp_full_shard"})["breakdown_bytes"]
    assert (fsdp["parameters"], fsdp["gradients"], fsdp["optimizer_states"]) == (N + gathered, N, 2 * N)
    grad_op = _state({"processes": 4, "strategy": "fsdp", "preset": "fsdp_shard_grad_op"})["breakdown_bytes"]
    assert grad_op["parameters"] == N + 2 * N  # the whole model stays gathered (bf16) from forward to backward


def test_lora_and_qlora_keep_no_state_for_the_frozen_base() -> None:
    adapters = 2 * 4 * ((64 + 64) * 4 + (64 + 128) * 3)  # r=4 on q/k/v/o (64->64) and gate/up/down (64<->128)
    lora = _state({}, method="lora")
    b = lora["breakdown_bytes"]
    assert lora["trainable_parameters"] == adapters
    assert (b["parameters"], b["gradients"], b["optimizer_states"]) == (
        2 * N + 4 * adapters,
        4 * adapters,
        8 * adapters,
    )
    qlora = _state({}, method="qlora")["breakdown_bytes"]
    quantised = 2 * (LAYER - 128)  # the layers' linear weights: 4 bits plus double-quantised constants
    rest = N - quantised  # embeddings, head and norms: float32 after prepare_model_for_kbit_training
    assert qlora["parameters"] == int(quantised * (0.5 + 1 / 64 + 4 / (64 * 256)) + rest * 4 + 4 * adapters)


def test_time_per_step_counts_six_flops_per_parameter_and_token() -> None:
    shape = shape_from_config(SMALL)
    assert shape is not None
    w = Workload(shape, 100, micro_batch=2, seq_len=8, grad_accum=3, precision="bf16")
    step = time_per_step(w, world=4)
    tokens = 2 * 8 * 3 * 4
    matmul = N - 100 * 64 - (2 * 128 + 64)  # neither the input embedding (a lookup) nor the norms are matmuls
    assert step["tokens"] == tokens
    assert step["flops"] == (6 * matmul + 12 * 2 * 64 * 8) * tokens
    assert step["seconds"] == pytest.approx(step["flops"] / (4 * 989e12 * 0.40))
    assert "40% MFU" in step["assumes"] and "H100" in step["assumes"]


def test_a_hub_model_gives_no_estimate_and_a_local_one_does(tmp_path) -> None:
    launch = LaunchSpec(processes=2)
    hub = estimate_stage(PlanView("sft", SFTParams(model_name_or_path="some-org/some-model")), launch, "sft")
    assert hub == {"unknown": "model size unknown: 'some-org/some-model' is not a local model directory"}
    local = tmp_path / "model"
    local.mkdir()
    (local / "config.json").write_text(__import__("json").dumps(TINY))
    est = estimate_stage(PlanView("sft", SFTParams(model_name_or_path=str(local), max_length=64)), launch, "sft")
    assert est["parameters"] == count_parameters(shape_from_config(TINY) or {}, 3000)
    assert est["world_size"] == 2 and est["strategy"] == "ddp" and est["method"] == "lora"
    assert est == estimate(Workload(shape_from_config(TINY) or {}, 3000, 2, 64, **_sft_defaults(est)), launch)


def _sft_defaults(est: dict[str, Any]) -> dict[str, Any]:
    """The Workload fields estimate_stage derives for SFTParams' defaults (device as resolved here)."""
    return {
        "precision": est["precision"],
        "device": est["device"],
        "method": "lora",
        "lora_rank": 16,
        "lora_dropout": True,
        "notes": est["notes"],
    }


def _local_model(tmp_path) -> str:
    import json

    local = tmp_path / "model"
    local.mkdir(exist_ok=True)
    (local / "config.json").write_text(json.dumps(TINY))
    return str(local)


def test_preference_stages_train_on_pairs(tmp_path) -> None:
    from recipe_runner_stages.train.dpo.stage import DPOParams
    from recipe_runner_stages.train.reward.stage import RewardParams

    model, launch = _local_model(tmp_path), LaunchSpec()
    n = count_parameters(shape_from_config(TINY) or {}, 3000)
    dpo = estimate_stage(PlanView("dpo", DPOParams(model_name_or_path=model, max_length=64)), launch, "dpo")
    assert dpo["micro_batch"] == 2 * 2  # chosen and rejected rows of per_device_train_batch_size 2
    assert dpo["memory_per_device"]["breakdown_bytes"]["reference_model"] == 4 * n  # a frozen float32 copy
    reward = estimate_stage(PlanView("reward", RewardParams(model_name_or_path=model)), launch, "reward")
    assert reward["parameters"] == n - 3000 * 192  # a one-output score head instead of the LM head
    assert "reference_model" not in reward["memory_per_device"]["breakdown_bytes"]


def test_the_stages_own_deepspeed_or_fsdp_parameter_wins(tmp_path) -> None:
    from recipe_runner.artifacts import MODEL_SHAPE, SEQ_LENGTH
    from recipe_runner.stage import Params, Upstream
    from recipe_runner_stages.train.pretrain.params import PretrainParams

    upstream = {
        "model": Upstream("init", "init", Params(), {MODEL_SHAPE: shape_from_config(TINY)}),
        "dataset": Upstream("pack", "pack", Params(), {SEQ_LENGTH: 128}),
    }
    launch = LaunchSpec(processes=4)
    own = PretrainParams(deepspeed={"zero_optimization": {"stage": 2}})
    est = estimate_stage(PlanView("pretrain", own, upstream), launch, "pretrain")
    assert est["strategy"] == "deepspeed zero2" and est["seq_len"] == 128
    assert "strategy from the stage's own deepspeed parameter" in est["notes"]
    fsdp = estimate_stage(PlanView("pretrain", PretrainParams(fsdp="shard_grad_op"), upstream), launch, "pretrain")
    assert fsdp["strategy"] == "fsdp shard_grad_op"
    no_rows = estimate_stage(PlanView("pretrain", PretrainParams(), {"model": upstream["model"]}), launch, "pretrain")
    assert no_rows == {"unknown": "sequence length unknown: the dataset input declares none"}
