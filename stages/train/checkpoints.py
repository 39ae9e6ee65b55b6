"""The resume point of a Trainer-backed stage: the newest *complete* trainer
checkpoint in the stage's checkpoint directory, the state the trainer saved
there, and training that resumes from it.

A checkpoint is complete when the Trainer's own files are there: the weights,
(unless only the model was saved) optimizer, scheduler and RNG state, and a
``trainer_state.json`` that parses -- the Trainer writes that file last, so a
SIGKILL or a full disk at any instant of the save leaves it absent or
truncated.  An incomplete checkpoint is set aside (moved to
``incomplete/checkpoint-N`` in the checkpoint dir, with a warning) and the
previous complete one is the resume point.  A checkpoint in another
strategy's layout (FSDP, DeepSpeed, plain) than the run's is refused, with
what to do: the strategy is not in the stage's key, and the Trainer loads
only its own layout."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from recipe_runner import StageContext, StageError

#: the weights of a checkpoint, under one of the names transformers / peft / accelerate's FSDP save them; a
#: name ending in "/" is a torch.distributed.checkpoint directory (FSDP's SHARDED_STATE_DICT, one file per
#: rank), complete once its ".metadata" is written -- torch writes it after every rank's shard
WEIGHTS_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "pytorch_model_fsdp.bin",  # FSDP, FULL_STATE_DICT
    "pytorch_model_fsdp_0/",  # FSDP, SHARDED_STATE_DICT
)
#: the optimizer state next to the weights: the Trainer's file, DeepSpeed's pointer to its own, or FSDP's
#: (FULL_STATE_DICT: one file; SHARDED_STATE_DICT: a torch.distributed.checkpoint directory)
OPTIMIZER_FILES = ("optimizer.pt", "latest", "optimizer.bin", "optimizer_0/")
#: what torch.distributed.checkpoint writes last into a checkpoint directory
DCP_METADATA = ".metadata"
#: the files that say which engine wrote a checkpoint; the Trainer alone (DDP, one process) writes none of them
STRATEGY_FILES = {"fsdp": ("pytorch_model_fsdp.bin", "pytorch_model_fsdp_0"), "deepspeed": ("latest",)}
#: where incomplete checkpoints are moved, inside the stage's checkpoint dir
SET_ASIDE_DIR = "incomplete"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def _saved_trainer_state(checkpoint: Path) -> dict[str, Any] | None:
    """The checkpoint's trainer_state.json, None when absent or truncated."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def checkpoint_is_complete(checkpoint: Path) -> bool:
    """Whether the Trainer finished saving ``checkpoint``: a parseable trainer
    state (written last), the weights and the optimizer state (the stages
    never set save_only_model), in the Trainer's, DeepSpeed's or FSDP's layout."""
    if _saved_trainer_state(checkpoint) is None:
        return False
    return all(any(_saved(checkpoint, name) for name in names) for names in (WEIGHTS_FILES, OPTIMIZER_FILES))


def _saved(checkpoint: Path, name: str) -> bool:
    """Whether the file ``name`` (or the distributed-checkpoint directory
    ``name/``, with its metadata) is in ``checkpoint``."""
    if name.endswith("/"):
        return (checkpoint / name / DCP_METADATA).is_file()
    return (checkpoint / name).is_file()


def set_aside_incomplete_checkpoints(ctx: StageContext[Any]) -> list[Path]:
    """Move every incomplete ``checkpoint-N`` of the stage to
    ``incomplete/checkpoint-N`` (replacing an earlier one set aside there),
    warning about each; returns where they went."""
    root = Path(ctx.checkpoint_dir)
    moved: list[Path] = []
    for path in sorted(root.iterdir()):
        if not (path.is_dir() and _CHECKPOINT_NAME.match(path.name)) or checkpoint_is_complete(path):
            continue
        target = root / SET_ASIDE_DIR / path.name
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
        ctx.log.warning("checkpoint %s is incomplete (interrupted while saving): set aside as %s", path, target)
        moved.append(target)
    return moved


def last_checkpoint(ctx: StageContext[Any]) -> str | None:
    """The newest complete trainer checkpoint in the stage's checkpoint dir
    (incomplete ones set aside first), logged with its step so a resume is
    visible in the run's log."""
    from transformers.trainer_utils import get_last_checkpoint

    if not Path(ctx.checkpoint_dir).is_dir():
        return None
    set_aside_incomplete_checkpoints(ctx)
    ckpt = get_last_checkpoint(str(ctx.checkpoint_dir))
    if ckpt:
        _require_same_strategy(ctx, Path(ckpt))
        step = ckpt.rsplit("-", 1)[-1]
        ctx.log.info("resuming from checkpoint %s (step %s)", ckpt, step)
        ctx.metrics["resumed_from_step"] = int(step) if step.isdigit() else step
    return ckpt


def checkpoint_strategy(checkpoint: Path) -> str:
    """fsdp, deepspeed or ddp: which engine's layout ``checkpoint`` has."""
    for strategy, names in STRATEGY_FILES.items():
        if any((checkpoint / name).exists() for name in names):
            return strategy
    return "ddp"


def run_strategy(ctx: StageContext[Any]) -> str:
    """fsdp, deepspeed or ddp: what the stage trains with (its raw trainer
    parameters win over its launch block, as in the trainer arguments)."""
    p = ctx.params
    if getattr(p, "deepspeed", None) is not None:
        return "deepspeed"
    if getattr(p, "fsdp", None):
        return "fsdp"
    return ctx.launch.strategy if ctx.launch is not None else "ddp"


def _require_same_strategy(ctx: StageContext[Any], checkpoint: Path) -> None:
    """The strategy is not part of a stage's key, so a re-run with another one
    finds the checkpoints of the first; the Trainer loads only its own
    engine's layout (FSDP's sharded or gathered state, DeepSpeed's, or plain)."""
    written, current = checkpoint_strategy(checkpoint), run_strategy(ctx)
    if written != current:
        raise StageError(
            f"{checkpoint} was written under strategy {written}, this run trains with {current}, which cannot "
            f"load it: run with strategy {written} to resume from it, or `recipe run --force {ctx.name}` to start "
            "the stage over"
        )


def trainer_state(checkpoint: str | None) -> dict[str, Any]:
    """The ``trainer_state.json`` of a checkpoint (global step, log history),
    empty without one."""
    if not checkpoint:
        return {}
    state: dict[str, Any] = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return state


def train_from_last_checkpoint(
    ctx: StageContext[Any], trainer: Any, measure_before: Callable[[], Mapping[str, Any]] | None = None
) -> Any:
    """``trainer.train()``, resumed from the newest checkpoint when there is
    one; on a fresh start ``measure_before`` (held-out numbers of the
    untrained model) runs first (under FSDP: when training starts, see
    stages/train/fsdp_model.py) and its metrics are kept.  Adds train_loss and
    train_steps to the stage's metrics and returns the TrainOutput."""
    from .fsdp_model import fsdp_enabled, measure_when_training_starts

    resume = last_checkpoint(ctx)
    if measure_before is not None and resume is None:
        if fsdp_enabled(trainer):
            measure_when_training_starts(ctx, trainer, measure_before)
        else:
            ctx.metrics.update(measure_before())
    result = trainer.train(resume_from_checkpoint=resume)
    ctx.metrics.update(train_loss=float(result.training_loss), train_steps=int(result.global_step))
    return result
