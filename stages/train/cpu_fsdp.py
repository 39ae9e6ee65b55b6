"""FSDP2 on CPU (gloo) for the Trainer-backed stages (pretrain, sft, reward, dpo).

torch shards a model with ``fully_shard`` on CPU as on GPUs, but accelerate
1.15 (the Trainer's engine) switches its shared ``AcceleratorState`` to
``DistributedType.FSDP`` only for GPU-like process groups: on CPU it stays
``MULTI_CPU`` and the Trainer would train plain DDP.  Here accelerate's state
is configured before the Trainer exists, as accelerate configures it on GPUs
(distributed type FSDP, the FSDP plugin built from the Trainer's own
``fsdp_plugin_args``, the plugin's mixed precision), and the Trainer is told
to use it (``accelerator_config.use_configured_state``).  From there the
Trainer's and accelerate's own FSDP2 code runs: ``fully_shard`` per decoder
layer, sharded optimizer states, FSDP checkpoints and the full state dict
gathered for the saved model.  What the stages do differently under FSDP (on
CPU and GPUs alike: evaluation before training, the gathered save) is in
stages/train/fsdp_model.py.

The first forward pass of the sharded model records what this rank holds
(the stage's metrics and log), so the sharding is observable, not assumed.

Refused, with the reason: CPU offload, one process, FSDP1, and
SHARDED_STATE_DICT (no weights in the saved model)."""

from __future__ import annotations

from typing import Any

from recipe_runner import StageContext, StageError


def configure_fsdp_on_cpu(kw: dict[str, Any], ctx: StageContext[Any]) -> dict[str, Any]:
    """Configure accelerate's shared state for FSDP2 on CPU from the
    TrainingArguments keywords ``kw`` (which ask for fsdp); returns the
    keywords that make the Trainer use that state."""
    from accelerate import Accelerator
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType
    from transformers import TrainingArguments

    args = TrainingArguments(**kw)  # the Trainer's reading of the FSDP config and precision
    _refuse_what_cpu_cannot_run(args.fsdp_plugin_args or {})
    _ = args.device  # sets up torch.distributed (gloo) and accelerate's PartialState, as the Trainer would
    partial = PartialState()
    if partial.distributed_type != DistributedType.MULTI_CPU or partial.num_processes < 2:
        raise StageError("FSDP on CPU needs at least 2 processes (launch.processes): one has nothing to shard with")
    plugin = _observed_plugin(ctx, args.fsdp_plugin_args)
    state = Accelerator(cpu=True, mixed_precision=args.mixed_precision, fsdp_plugin=plugin).state
    # what AcceleratorState.__init__ does for a GPU process group with an FSDP plugin
    state.distributed_type = DistributedType.FSDP
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    ctx.metrics["strategy"] = "fsdp"
    ctx.log.info("FSDP2 on CPU (gloo): accelerate configured for FSDP, %s", _describe(args.fsdp_plugin_args))
    return {"accelerator_config": {"use_configured_state": True}}


def _refuse_what_cpu_cannot_run(plugin_args: dict[str, Any]) -> None:
    if int(plugin_args.get("fsdp_version", 2)) != 2:
        raise StageError(
            "FSDP on CPU runs FSDP2 only (fsdp_config version 2); FSDP1, deprecated by transformers 5, is not wired "
            "for CPU here"
        )
    if plugin_args.get("cpu_offload"):
        raise StageError(
            "fsdp cpu_offload (preset fsdp_offload) needs GPUs: torch's CPUOffloadPolicy pins the offloaded shards, "
            "which fails without an accelerator, and on CPU the parameters are in CPU memory already; "
            "use preset fsdp_full_shard"
        )
    if "SHARDED" in str(plugin_args.get("state_dict_type", "FULL_STATE_DICT")):
        raise StageError(
            "fsdp state_dict_type SHARDED_STATE_DICT: the Trainer's save_model then writes no weights, and the stage "
            "would commit a model without them; use FULL_STATE_DICT (the presets' setting)"
        )


def _describe(plugin_args: dict[str, Any]) -> str:
    reshard = plugin_args.get("reshard_after_forward", True)
    return f"reshard_after_forward={reshard}, state_dict_type={plugin_args.get('state_dict_type')}"


def _observed_plugin(ctx: StageContext[Any], plugin_args: dict[str, Any]) -> Any:
    """accelerate's FSDP plugin that, when accelerate hands it the model to
    wrap, arranges for the first forward pass of the sharded model to record
    what this rank holds."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    class ObservedPlugin(FullyShardedDataParallelPlugin):
        observed = False

        def set_auto_wrap_policy(self, model: Any) -> None:
            super().set_auto_wrap_policy(model)
            if self.observed:
                return
            self.observed = True

            def once(module: Any, _inputs: Any) -> None:
                record_sharding(ctx, module)
                handle.remove()

            handle = model.register_forward_pre_hook(once)

    return ObservedPlugin(**plugin_args)


def record_sharding(ctx: StageContext[Any], model: Any) -> dict[str, int]:
    """How much of ``model`` this rank holds: parameter values in total and
    in this rank's shards, and how many parameters are DTensors; logged, and
    kept in the stage's metrics (rank 0's are the stage's)."""
    from torch.distributed.tensor import DTensor

    params = list(model.parameters())
    local = sum(q.to_local().numel() if isinstance(q, DTensor) else q.numel() for q in params)
    counts = {
        "fsdp_parameters": sum(q.numel() for q in params),
        "fsdp_parameters_this_rank": local,
        "fsdp_sharded_tensors": sum(isinstance(q, DTensor) for q in params),
        "fsdp_tensors": len(params),
    }
    ctx.metrics.update(counts)
    ctx.log.info(
        "FSDP2: this rank holds %s of %s parameter values (%d of %d tensors sharded)",
        f"{local:,}",
        f"{counts['fsdp_parameters']:,}",
        counts["fsdp_sharded_tensors"],
        counts["fsdp_tensors"],
    )
    return counts
