"""Memory per device and time per step of a training stage, estimated at plan
time (``recipe plan``) from the model's shape, the stage's batch and sequence
length and the ``launch:`` block's sharding -- cheap arithmetic, no torch.

Memory, in bytes per device, in three phases of an optimizer step (the
Trainer sets gradients to None after each step, so a forward pass holds no
gradients unless gradient accumulation keeps them):

- forward (start of backward): parameters + optimizer states + saved
  activations (with the loss's logit gradients);
- backward with gradient checkpointing: parameters + optimizer states +
  gradients + the layer inputs kept + one layer's recomputed activations;
- optimizer step: parameters + gradients + optimizer states + the step's
  temporaries (torch's foreach AdamW on a GPU makes one fp32 copy).

The peak is the largest phase.  What each holds follows the engine:

- torch (the Trainer's own loop, DDP, FSDP2): weights, gradients and AdamW's
  two moments in the weights' dtype (float32: the Trainer's mixed precision is
  autocast over float32 master weights, which adds bf16 copies of the matmul
  weights for the forward and backward); DDP keeps gradient buckets as big as
  the gradients; FSDP2 shards all three over the world size, gathering one
  layer at a time (``fsdp_full_shard``) or keeping the whole model gathered
  from forward to backward (``fsdp_shard_grad_op``); ``fsdp_offload`` keeps the
  shards on the CPU;
- DeepSpeed: bf16/fp16 weights and gradients (2 + 2 bytes) and 12 bytes of
  optimizer state per parameter (fp32 master weights and moments); ZeRO-1
  shards the optimizer states, ZeRO-2 the gradients too, ZeRO-3 the weights
  too; an offloaded part lives on the CPU;
- LoRA: the frozen base has no gradients or optimizer states, the adapters
  (float32) have both; QLoRA's base linear layers take 4 bits per weight plus
  their quantisation constants, the rest of the base float32.

Activations per token of a decoder layer were measured (torch's MemTracker,
SDPA attention, one Llama layer) as ``32h + 8kv + 16i`` bytes in float32 and
``30h + 8kv + 8i`` under bf16 autocast (h: hidden size, kv: key/value width,
i: MLP width; half the MLP term for a plain, ungated MLP), plus 8 (fp32) or 6
(autocast) bytes per vocabulary entry per token for the logits and 8 for
their gradient at the start of the backward pass (docs/distributed.md).

Time per step: ``6 N`` FLOPs per trained token (N: the parameters used in
matmuls; ``4 N`` for a frozen LoRA base, ``+2 N`` with gradient checkpointing
and for DPO's reference model) plus ``12 L h s`` for attention, at an assumed
throughput: an H100's dense peak at 40% model FLOPs utilisation."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from recipe_runner import PlanView
from recipe_runner.artifacts import MAX_POSITIONS, MODEL_SHAPE, SEQ_LENGTH
from recipe_runner.launch import LaunchSpec, visible_gpus

from ..common.model_shape import count_parameters, layer_parameters, local_model_shape

#: assumed accelerator throughput (dense, no sparsity) in FLOP/s per device, by precision
H100_PEAK_FLOPS = {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}
ASSUMED_MFU = 0.40
#: assumed vocabulary when the plan cannot know it (a random init sized by a tokenizer trained in the run)
ASSUMED_VOCAB = 32000
#: activation bytes per token of one decoder layer: (per hidden, per key/value width, per MLP width)
LAYER_BYTES = {"fp32": (32, 8, 16), "amp": (30, 8, 8)}
#: bytes per token outside the layers: (embedding output and final norm per hidden, logits per vocab entry)
OUTER_BYTES = {"fp32": (12, 8), "amp": (10, 6)}
LOSS_GRAD_BYTES = 8  # per vocabulary entry per token: the logits' gradients at the start of the backward pass
NF4_BYTES = {True: 0.5 + 1 / 64 + 4 / (64 * 256), False: 0.5 + 4 / 64}  # per weight, by double quantisation


@dataclass(frozen=True)
class Workload:
    """What one training process computes: the model's shape, the method and
    precision, and how many tokens a micro-batch holds."""

    shape: Mapping[str, Any]
    vocab: int
    micro_batch: int  # rows per device per forward pass (pairs count twice)
    seq_len: int
    grad_accum: int = 1
    precision: str = "fp32"  # bf16 | fp16 | fp32
    device: str = "cuda"  # cuda | cpu
    method: str = "full"  # full | lora | qlora
    lora_rank: int = 16
    lora_targets: list[str] | str = "all-linear"
    lora_dropout: bool = True
    double_quant: bool = True
    checkpointing: bool = False
    optimizer: str = "adamw_torch"
    lm_head: bool = True  # False: a sequence classifier (reward model)
    reference_copy: bool = False  # DPO without LoRA: a frozen copy of the policy
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Sharding:
    """How the launch block spreads training state over the world."""

    label: str
    engine: Literal["torch", "deepspeed", "fsdp"]
    world: int
    optimizer: bool = False
    gradients: bool = False
    parameters: bool = False
    offload_optimizer: bool = False
    offload_parameters: bool = False
    gather_all: bool = False  # FSDP without resharding after forward: the whole model stays gathered


def sharding_of(launch: LaunchSpec) -> Sharding:
    """The sharding of a launch block (its preset, raw config or default)."""
    world = launch.world_size()
    config = launch.strategy_config() or {}
    if launch.strategy == "deepspeed":
        zero = config.get("zero_optimization") or {}
        stage = int(zero.get("stage", 0))
        off_opt = (zero.get("offload_optimizer") or {}).get("device") in ("cpu", "nvme")
        off_par = (zero.get("offload_param") or {}).get("device") in ("cpu", "nvme") and stage >= 3
        label = launch.preset or f"deepspeed zero{stage}" + (" offload" if off_opt or off_par else "")
        return Sharding(label, "deepspeed", world, stage >= 1, stage >= 2, stage >= 3, off_opt, off_par)
    if launch.strategy == "fsdp":
        # FSDP2: reshard_after_forward true / false; FSDP1: a sharding strategy name in the same key
        reshard = str(config.get("reshard_after_forward", True)).upper()
        offload = bool(config.get("cpu_offload") or config.get("offload_params"))
        if reshard == "NO_SHARD":
            return Sharding(launch.preset or "fsdp no_shard", "torch", world)
        gather_all = reshard in ("FALSE", "SHARD_GRAD_OP", "_HYBRID_SHARD_ZERO2")
        label = launch.preset or "fsdp " + ("shard_grad_op" if gather_all else "full_shard") + " offload" * offload
        return Sharding(label, "fsdp", world, True, True, True, offload, offload, gather_all)
    return Sharding("ddp", "torch", world)


def _linear_parameters(shape: Mapping[str, Any], vocab: int, lm_head: bool) -> int:
    """Weights used in matmuls: the layers' projections (not their norms) and the LM head."""
    projections = shape["num_hidden_layers"] * (layer_parameters(shape) - 2 * shape["hidden_size"])
    return projections + (vocab * shape["hidden_size"] if lm_head else 0)


def _lora_parameters(w: Workload) -> tuple[int, int]:
    """(adapter parameters, adapted input features per layer) of LoRA on the
    Llama-style projections named by ``lora_targets`` ('all-linear': all of them)."""
    s = w.shape
    h, i = s["hidden_size"], s["intermediate_size"]
    q, kv = s["num_attention_heads"] * s["head_dim"], s["num_key_value_heads"] * s["head_dim"]
    dims = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h)}
    dims.update({"gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)} if s.get("gated_mlp", True) else {})
    dims.update({} if s.get("gated_mlp", True) else {"up_proj": (h, i), "down_proj": (i, h)})
    names = list(dims) if w.lora_targets == "all-linear" else [n for n in w.lora_targets if n in dims]
    adapter = sum(w.lora_rank * (dims[n][0] + dims[n][1]) for n in names)
    return s["num_hidden_layers"] * adapter, sum(dims[n][0] for n in names)


def _optimizer_bytes(optimizer: str, weight_bytes: int) -> int:
    """Optimizer state bytes per trainable parameter (torch optimizers keep the parameters' dtype)."""
    name = optimizer.lower()
    if "8bit" in name:
        return 2
    if name.startswith(("sgd", "adafactor")):
        return 0  # no momentum / factored second moments: negligible
    return (1 if "lion" in name else 2) * weight_bytes


def activation_bytes(w: Workload) -> dict[str, int]:
    """Saved activations of one micro-batch: 'saved' (held at the end of the
    forward pass, loss gradients included), 'layer' (one layer's, recomputed
    under gradient checkpointing) and 'kept' (the layer inputs checkpointing keeps)."""
    s, tokens = w.shape, w.micro_batch * w.seq_len
    h, layers = s["hidden_size"], s["num_hidden_layers"]
    mode = "fp32" if w.precision == "fp32" else "amp"
    per_h, per_kv, per_i = LAYER_BYTES[mode]
    mlp = per_i * s["intermediate_size"] * (1 if s.get("gated_mlp", True) else 0.5)
    per_layer = per_h * h + per_kv * s["num_key_value_heads"] * s["head_dim"] + mlp + 4 * s["num_attention_heads"] + 8
    if w.method != "full" and w.lora_dropout:
        adapted_in = _lora_parameters(w)[1]
        per_layer += 5 * adapted_in  # the dropped-out input copy (4 bytes) and its mask (1 byte) per adapter
    outer_h, outer_v = OUTER_BYTES[mode]
    vocab = w.vocab if w.lm_head else 0
    outer = outer_h * h + (outer_v + LOSS_GRAD_BYTES) * vocab
    layer = int(per_layer * tokens)
    kept = int(4 * h * tokens * layers) if w.checkpointing else layer * layers
    return {"saved": kept + int(outer * tokens), "layer": layer, "kept": kept}


def _weights(w: Workload) -> dict[str, float]:
    """Parameter counts and weight bytes of the model as the stage loads it:
    'total' and 'trainable' parameters, 'frozen_bytes' (a LoRA base),
    'weight_bytes' (per trainable weight) and 'copies' (bf16 copies autocast makes)."""
    s, vocab = w.shape, w.vocab
    total = count_parameters(s, vocab)
    if not w.lm_head and not s.get("tie_word_embeddings"):
        total -= vocab * s["hidden_size"]  # a sequence classifier has a one-output head instead
    matmul = _linear_parameters(s, vocab, w.lm_head)
    amp = w.precision != "fp32"
    if w.method == "full":
        return {"total": total, "trainable": total, "frozen_bytes": 0, "weight_bytes": 4, "copies": 2 * matmul * amp}
    adapters = _lora_parameters(w)[0]
    if w.method == "qlora":
        quantised = _linear_parameters(s, vocab, False)
        frozen = quantised * NF4_BYTES[w.double_quant] + (total - quantised) * 4  # the rest upcast to float32
        return {"total": total, "trainable": adapters, "frozen_bytes": frozen, "weight_bytes": 4, "copies": 0}
    base = 2 if amp else 4  # sft and dpo load a LoRA base in bf16 where the device computes in bf16
    return {"total": total, "trainable": adapters, "frozen_bytes": total * base, "weight_bytes": 4, "copies": 0}


def _state_bytes(w: Workload, sh: Sharding, m: Mapping[str, float]) -> dict[str, float]:
    """Parameters, gradients and optimizer states per device (and on the CPU) under the sharding."""
    t, wb = m["trainable"], m["weight_bytes"]
    if sh.engine == "deepspeed" and w.method == "full":
        params, grads, opt = (2 * t, 2 * t, 12 * t) if w.precision != "fp32" else (4 * t, 4 * t, 8 * t)
    else:
        params, grads, opt = m["frozen_bytes"] + wb * t, wb * t, _optimizer_bytes(w.optimizer, int(wb)) * t
    out = {"ddp_buckets": grads if sh.engine == "torch" and sh.world > 1 else 0, "cpu": 0.0}
    reference = m["total"] * 4 if w.reference_copy else 0
    if sh.optimizer:
        opt /= sh.world
    if sh.gradients:
        grads /= sh.world
    if sh.parameters:
        params, reference = params / sh.world, reference / sh.world
    if sh.offload_optimizer:
        out["cpu"] += opt + (grads if sh.engine == "fsdp" else 0)
        opt, grads = 0, (0 if sh.engine == "fsdp" else grads)
    if sh.offload_parameters:
        out["cpu"] += params
        params = 0
    if sh.parameters:
        params += _gathered(w, sh, m)
    temps = 0 if sh.engine == "deepspeed" or sh.offload_optimizer or w.device == "cpu" or not opt else 4 * t
    temps /= sh.world if sh.optimizer else 1
    return {
        **out,
        "parameters": params,
        "gradients": grads,
        "optimizer_states": opt,
        "reference_model": reference,
        "step_temporaries": temps,
    }


def _gathered(w: Workload, sh: Sharding, m: Mapping[str, float]) -> float:
    """Weights gathered on a device under ZeRO-3 / FSDP: the whole model
    (FSDP without resharding), else two layers (the one computing, the one
    prefetched) and the embeddings and head, in the compute dtype."""
    compute = 4 if w.precision == "fp32" else 2
    if sh.gather_all:
        return m["total"] * compute
    layer = layer_parameters(w.shape)
    outer = m["total"] - w.shape["num_hidden_layers"] * layer
    return (2 * layer + outer) * compute


def memory_per_device(w: Workload, sh: Sharding) -> dict[str, Any]:
    """Peak bytes per device of one optimizer step, with its breakdown and phase."""
    m = dict(_weights(w))
    if sh.engine != "torch":
        m["copies"] = 0  # DeepSpeed keeps bf16 weights; FSDP2 gathers them in the compute dtype
    st = _state_bytes(w, sh, m)
    act = activation_bytes(w)
    persistent = st["parameters"] + st["optimizer_states"] + st["ddp_buckets"] + st["reference_model"]
    held_grads = st["gradients"] if w.grad_accum > 1 else 0
    phases = {
        "forward": persistent + held_grads + act["saved"] + m["copies"],
        "optimizer step": persistent + st["gradients"] + st["step_temporaries"],
    }
    if w.checkpointing:
        phases["backward"] = persistent + st["gradients"] + act["kept"] + act["layer"] + m["copies"]
    phase = max(phases, key=lambda k: phases[k])
    breakdown = {
        "parameters": st["parameters"],
        "gradients": st["gradients"],
        "optimizer_states": st["optimizer_states"],
        "activations": act["saved"],
        "autocast_weight_copies": m["copies"],
        "ddp_buckets": st["ddp_buckets"],
        "reference_model": st["reference_model"],
        "step_temporaries": st["step_temporaries"],
    }
    return {
        "total_bytes": int(phases[phase]),
        "peak_phase": phase,
        "breakdown_bytes": {k: int(v) for k, v in breakdown.items() if v or k in ("gradients", "activations")},
        "sum_bytes": int(sum(breakdown.values())),
        "cpu_offload_bytes": int(st["cpu"]),
        "parameters": int(m["total"]),
        "trainable_parameters": int(m["trainable"]),
    }


def time_per_step(w: Workload, world: int) -> dict[str, Any]:
    """FLOPs of one optimizer step over all processes and its seconds at the assumed throughput."""
    s = w.shape
    matmul = _linear_parameters(s, w.vocab, w.lm_head)
    attention = s["num_hidden_layers"] * s["hidden_size"] * w.seq_len  # 4x forward, 8x backward per token
    full = w.method == "full"
    per_matmul = 2 + (4 if full else 2) + 2 * w.checkpointing + 2 * w.reference_copy
    per_token = per_matmul * matmul + (12 + 4 * w.checkpointing + 4 * w.reference_copy) * attention
    tokens = w.micro_batch * w.seq_len * w.grad_accum * world
    flops = per_token * tokens
    peak = H100_PEAK_FLOPS.get(w.precision, H100_PEAK_FLOPS["fp32"])
    seconds = flops / (world * peak * ASSUMED_MFU)
    return {
        "flops": float(flops),
        "tokens": int(tokens),
        "seconds": seconds,
        "assumes": f"H100 {w.precision} dense {peak / 1e12:.0f} TFLOP/s per process at {ASSUMED_MFU:.0%} MFU",
    }


def estimate(w: Workload, launch: LaunchSpec) -> dict[str, Any]:
    """What ``recipe plan`` shows for a training stage: memory per device and time per step."""
    sh = sharding_of(launch)
    mem = memory_per_device(w, sh)
    return {
        "estimate": True,
        "world_size": sh.world,
        "strategy": sh.label,
        "device": w.device,
        "precision": w.precision,
        "method": w.method,
        "parameters": mem.pop("parameters"),
        "trainable_parameters": mem.pop("trainable_parameters"),
        "micro_batch": w.micro_batch,
        "seq_len": w.seq_len,
        "gradient_checkpointing": w.checkpointing,
        "memory_per_device": mem,
        "time_per_step": time_per_step(w, sh.world),
        "notes": list(w.notes),
    }


def estimate_stage(view: PlanView[Any], launch: LaunchSpec, kind: str) -> dict[str, Any]:
    """The estimate of a pretrain / sft / reward / dpo stage from its params
    and upstream facts; ``{"unknown": why}`` where the plan cannot know the
    model's size or the sequence length."""
    p = view.params
    model = view.upstream.get("model")
    facts: Mapping[str, Any] = model.facts if model is not None else {}
    ref = getattr(p, "model_name_or_path", None)
    shape = local_model_shape(ref) if ref else facts.get(MODEL_SHAPE)
    if not isinstance(shape, Mapping):
        source = f"{ref!r} is not a local model directory" if ref else "the upstream model's shape is not known"
        return {"unknown": f"model size unknown: {source}"}
    seq = _sequence_length(view, kind, facts)
    if seq is None:
        return {"unknown": "sequence length unknown: the dataset input declares none"}
    notes: list[str] = []
    vocab = shape.get("vocab_size")
    if not isinstance(vocab, int):
        vocab = ASSUMED_VOCAB
        notes.append(f"vocabulary unknown at plan time: {ASSUMED_VOCAB} assumed")
    elif shape.get("vocab_size_at_most"):
        notes.append(f"vocabulary at most {vocab} (the tokenizer is trained in this run)")
    device = p.device if p.device != "auto" else ("cuda" if visible_gpus() or launch.nodes > 1 else "cpu")
    if p.device == "auto":
        notes.append(f"device auto: {'a GPU' if device == 'cuda' else 'no GPU'} visible here, estimated for {device}")
    precision = p.precision if p.precision != "auto" else ("bf16" if device == "cuda" else "fp32")
    lora = getattr(p, "lora", None)
    method = getattr(p, "method", "lora" if lora is not None else "full")
    if kind in ("sft", "reward", "dpo"):
        notes.append(f"rows at max_length {seq} (an upper bound: batches are padded to their longest row)")
    w = Workload(
        shape=shape,
        vocab=vocab,
        micro_batch=p.per_device_train_batch_size * (2 if kind in ("reward", "dpo") else 1),
        seq_len=seq,
        grad_accum=p.gradient_accumulation_steps,
        precision=precision,
        device=device,
        method=method,
        lora_rank=lora.r if lora is not None else 16,
        lora_targets=lora.target_modules if lora is not None else "all-linear",
        lora_dropout=bool(lora.dropout) if lora is not None else False,
        double_quant=getattr(getattr(p, "qlora", None), "double_quant", True),
        checkpointing=p.gradient_checkpointing,
        optimizer=p.optim,
        lm_head=kind != "reward",
        reference_copy=kind == "dpo" and lora is None,
        notes=notes,
    )
    return estimate(w, _stage_strategy(p, launch, notes))


def _stage_strategy(p: Any, launch: LaunchSpec, notes: list[str]) -> LaunchSpec:
    """The launch block with the stage's own ``deepspeed`` / ``fsdp``
    parameters put in, where set (they win over the launch block's strategy)."""
    config: dict[str, Any] | None = None
    strategy: Literal["deepspeed", "fsdp"]
    if p.deepspeed is not None:
        config = p.deepspeed if isinstance(p.deepspeed, dict) else _json_file(str(p.deepspeed))
        if config is None:
            notes.append(f"deepspeed config {p.deepspeed!r} unreadable here: the launch block's strategy is assumed")
            return launch
        strategy = "deepspeed"
    elif p.fsdp:
        config = {"reshard_after_forward": "shard_grad_op" not in p.fsdp, "cpu_offload": "offload" in p.fsdp}
        strategy = "fsdp"
    else:
        return launch
    notes.append(f"strategy from the stage's own {strategy} parameter")
    return launch.model_copy(update={"strategy": strategy, "preset": None, "config": config})


def _json_file(path: str) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).expanduser().read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _sequence_length(view: PlanView[Any], kind: str, model_facts: Mapping[str, Any]) -> int | None:
    """Tokens per row: the packed dataset's row length (pretrain), else the
    stage's max_length capped at the model's context length."""
    max_pos = model_facts.get(MAX_POSITIONS)
    if kind == "pretrain":
        dataset = view.upstream.get("dataset")
        seq = dataset.facts.get(SEQ_LENGTH) if dataset is not None else None
        return seq if isinstance(seq, int) else None
    length = int(view.params.max_length)
    return min(length, max_pos) if isinstance(max_pos, int) else length
