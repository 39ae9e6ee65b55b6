"""What the Trainer-backed stages do differently while FSDP shards their model
(on GPUs, and on CPU through stages/train/cpu_fsdp.py): each rank holds only
its shards, and accelerate's FSDP2 prepares a model only together with its
optimizer.

- Held-out numbers of the untrained model are measured when training starts
  (a trainer callback at ``on_train_begin``), once the Trainer has prepared
  the model with its optimizer; before ``train()`` accelerate would refuse to
  prepare the model alone ("a model and optimizer must be passed together").
- A model evaluated without training (pretrain's checkpoint that already
  reached max_steps) is prepared with a fresh optimizer first, as the Trainer
  prepares it for training.
- The trained model is saved through ``trainer.save_model``, which gathers
  the full state dict from the shards (every rank takes part) and writes it
  on rank 0; each rank's own ``save_pretrained`` would meet sharded storage.
  A save without weights (SHARDED_STATE_DICT: the Trainer then writes
  none) fails the stage rather than commit a model without them.
- The FSDP facts the run records (strategy, parameters per rank) go after
  the stage's headline metrics, which the console summary shows first."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from recipe_runner import StageContext, StageError

#: the weights ``trainer.save_model`` writes with a full state dict (a model, or a PEFT adapter)
SAVED_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
#: the metrics stages/train/cpu_fsdp.py records about the sharding
FSDP_FACTS = ("strategy", "fsdp_parameters", "fsdp_parameters_this_rank", "fsdp_sharded_tensors", "fsdp_tensors")


def fsdp_enabled(trainer: Any) -> bool:
    """Whether the Trainer's accelerate runs FSDP (GPUs, or CPU as configured by cpu_fsdp)."""
    return bool(getattr(trainer, "is_fsdp_enabled", False))


def measure_when_training_starts(
    ctx: StageContext[Any], trainer: Any, measure: Callable[[], Mapping[str, Any]]
) -> None:
    """Run ``measure`` (held-out numbers of the untrained model) when the
    Trainer starts training, its model prepared with the optimizer, and keep
    its metrics."""
    from transformers import TrainerCallback

    class MeasureAtStart(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            ctx.metrics.update(measure())
            trainer.remove_callback(self)

    trainer.add_callback(MeasureAtStart())


def prepare_to_evaluate_untrained(trainer: Any) -> None:
    """Under FSDP, shard the model together with a fresh optimizer, as
    ``train()`` would, so the Trainer can evaluate it without training."""
    if not fsdp_enabled(trainer):
        return
    trainer.create_optimizer()
    model, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
    trainer.model = trainer.model_wrapped = model


def save_gathered_model(ctx: StageContext[Any], trainer: Any, out: Path) -> bool:
    """Save the trainer's model (full weights gathered from the shards, with
    the tokenizer) into ``out``: every rank calls it, rank 0 writes.  Returns
    whether this rank is rank 0 (the one whose output the runner commits)."""
    from ..common.models import match_umask

    trainer.save_model(str(out))
    facts_after_headline_metrics(ctx)
    if not trainer.is_world_process_zero():
        return False
    if not any((out / name).is_file() for name in SAVED_WEIGHTS):
        raise StageError(
            f"{ctx.name}: the Trainer saved no weights under FSDP (state_dict_type "
            f"{trainer.accelerator.state.fsdp_plugin.state_dict_type}): use FULL_STATE_DICT, the presets' setting"
        )
    (out / "training_args.bin").unlink(missing_ok=True)
    match_umask(out)  # safetensors writes its weights 0600 (through a private temporary file)
    return True


def facts_after_headline_metrics(ctx: StageContext[Any]) -> None:
    """Move the FSDP facts to the end of the stage's metrics."""
    for key in FSDP_FACTS:
        if key in ctx.metrics:
            ctx.metrics[key] = ctx.metrics.pop(key)
