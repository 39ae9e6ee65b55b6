"""The ``launch:`` block: how many processes (and nodes) a stage that can run
distributed is started in, by which launcher, with which sharding strategy.

At recipe level it is the default of every stage whose plugin can run
distributed (``Stage.distributed = True``); a stage's own ``launch:`` is merged
over it.  Stages that cannot run distributed run once, in the orchestrating
process.  Nothing here imports torch: ``recipe validate`` reads it."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: named strategy configs shipped with the package (recipe_runner/launch_presets/<name>.json)
PRESETS: dict[str, Literal["deepspeed", "fsdp"]] = {
    "zero1": "deepspeed",
    "zero2": "deepspeed",
    "zero3": "deepspeed",
    "zero3_offload": "deepspeed",
    "fsdp_full_shard": "fsdp",  # FSDP2: parameters resharded after forward (ZeRO-3 like)
    "fsdp_shard_grad_op": "fsdp",  # FSDP2: kept gathered between forward and backward (ZeRO-2 like)
    "fsdp_offload": "fsdp",  # FSDP2 full shard with parameters and gradients offloaded to CPU
}
# FSDP1's hybrid_shard is left out: transformers 5 deprecates FSDP1, and FSDP2 has no hybrid strategy there


class LaunchSpec(BaseModel):
    """A ``launch:`` block (recipe level or per stage)."""

    model_config = ConfigDict(extra="forbid")
    processes: int | Literal["auto"] = Field(
        1, description="processes per node: an int, or auto = the visible GPUs (1 on a machine without GPUs)"
    )
    nodes: int = Field(1, ge=1, description="nodes; more than 1 runs through srun inside a Slurm allocation")
    launcher: Literal["torchrun", "accelerate"] = Field("torchrun", description="what starts the processes")
    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp", description="ddp (every rank holds the whole model), fsdp (FSDP2) or deepspeed (ZeRO)"
    )
    preset: str | None = Field(
        None,
        description="a named strategy config shipped with recipe-runner: " + ", ".join(PRESETS),
    )
    config: dict[str, Any] | None = Field(
        None, description="a raw DeepSpeed config / FSDP config dict instead of a preset"
    )
    port: int | None = Field(
        None, ge=1, le=65535, description="rendezvous port (default: a free one, or 29500 across nodes)"
    )
    elastic: bool = Field(
        False,
        description="a re-run with another process count continues from the checkpoints the previous count left "
        "(ddp only; the global batch follows the new count; the output is marked and never shared)",
    )

    @model_validator(mode="after")
    def _check(self) -> LaunchSpec:
        if isinstance(self.processes, int) and self.processes < 1:
            raise ValueError(f"processes must be at least 1 or 'auto', got {self.processes}")
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise ValueError(f"unknown preset {self.preset!r}; presets: {', '.join(PRESETS)}")
            if PRESETS[self.preset] != self.strategy:
                raise ValueError(
                    f"preset {self.preset!r} is a {PRESETS[self.preset]} config; set strategy: {PRESETS[self.preset]}"
                )
            if self.config is not None:
                raise ValueError("give either preset or config, not both")
        if self.elastic and self.strategy != "ddp":
            raise ValueError(
                f"elastic: true continues DDP checkpoints (whole model and optimizer on every rank); "
                f"{self.strategy} checkpoints are sharded per rank, so another process count cannot load them"
            )
        if self.strategy == "ddp" and (self.preset or self.config):
            raise ValueError("strategy ddp takes no preset or config (they are for fsdp / deepspeed)")
        return self

    def per_node(self) -> int:
        """Processes per node, with ``auto`` resolved (without importing torch)."""
        return visible_gpus() or 1 if self.processes == "auto" else int(self.processes)

    def world_size(self) -> int:
        return self.per_node() * self.nodes

    def needs_launcher(self) -> bool:
        """More than one process, or a strategy that needs torch.distributed even in one (FSDP, DeepSpeed)."""
        return self.world_size() > 1 or self.strategy != "ddp"

    def cannot_start(self) -> str | None:
        """Why these processes cannot start on this machine (checked before any
        rank is launched), or None.  DeepSpeed runs only on GPUs: on a machine
        without one the Trainer's engine (accelerate) would train plain DDP."""
        if self.strategy == "deepspeed" and visible_gpus() == 0:
            return (
                "strategy deepspeed needs GPUs and none is visible here (CUDA_VISIBLE_DEVICES, "
                "/proc/driver/nvidia): use strategy: ddp or fsdp on CPU"
            )
        return None

    def strategy_config(self) -> dict[str, Any] | None:
        """The DeepSpeed / FSDP config the trainer gets (preset or raw), None for ddp."""
        if self.config is not None:
            return dict(self.config)
        if self.preset is not None:
            return load_preset(self.preset)
        if self.strategy == "deepspeed":
            return load_preset("zero2")
        if self.strategy == "fsdp":
            return load_preset("fsdp_full_shard")
        return None


def load_preset(name: str) -> dict[str, Any]:
    text = resources.files("recipe_runner").joinpath("launch_presets", f"{name}.json").read_text()
    preset: dict[str, Any] = json.loads(text)
    return preset


def merge(recipe_level: dict[str, Any] | None, stage_level: dict[str, Any] | None) -> dict[str, Any]:
    """A stage's launch block over the recipe's (key by key)."""
    return {**(recipe_level or {}), **(stage_level or {})}


def visible_gpus() -> int:
    """CUDA devices this process may use, counted without importing torch."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([d for d in env.split(",") if d.strip() and d.strip() != "-1"])
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0
