"""What the stages that train through transformers' Trainer (pretrain, sft,
reward, dpo) share under a ``launch:`` block: they can run data-parallel
(DDP, FSDP, DeepSpeed; the Trainer shards the batches), and `recipe plan`
estimates their memory per device and time per step from their parameters
(stages/train/resource_estimate.py, no torch)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from recipe_runner import PlanView
from recipe_runner.launch import LaunchSpec


class DataParallelTrainerStage:
    """Mixin, listed before ``Stage`` in a stage's bases; the stage's
    registry name says which kind of training the estimate models."""

    name: ClassVar[str]
    distributed: ClassVar[bool | str] = True

    @classmethod
    def plan_estimate(cls, view: PlanView[Any], launch: LaunchSpec) -> Mapping[str, Any]:
        from .resource_estimate import estimate_stage

        return estimate_stage(view, launch, cls.name)
