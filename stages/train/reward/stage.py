"""reward: train a reward model on preference pairs with trl's RewardTrainer
(Bradley-Terry loss: -log sigmoid(r(chosen) - r(rejected))).  The model is a
sequence classifier with one output, initialised from a causal LM; it reports
the pairwise accuracy on held-out pairs before and after training."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from recipe_runner import REWARD_MODEL, Artifact, StageContext, StageError

from ...common.devices import with_cpu_threads
from ..data_parallel import DataParallelTrainerStage
from ..preference.params import PreferenceParams
from ..preference.stage import PreferenceStage


class RewardParams(PreferenceParams):
    """Reward-model training settings (plus every PreferenceParams / TrainingParams field)."""

    learning_rate: float = Field(1e-5, gt=0, description="peak learning rate")
    center_rewards_coefficient: float | None = Field(
        None, description="weight of an auxiliary loss that pulls rewards towards zero mean (Eisenstein et al. 2023)"
    )
    max_eval_samples: int | None = Field(500, ge=1, description="cap on held-out pairs (pairwise accuracy)")


class RewardStage(DataParallelTrainerStage, PreferenceStage[RewardParams]):
    name = "reward"
    version = "1"
    description = "Reward model (sequence classifier) on preference pairs with trl's RewardTrainer"
    Params = RewardParams
    outputs = {"reward_model": REWARD_MODEL}

    @with_cpu_threads
    def run(self, ctx: StageContext[RewardParams]) -> dict[str, Artifact]:
        from ..preference.stage import start_preference_run
        from .scoring import load_reward_base

        start = start_preference_run(ctx, ctx.params, ctx.params.max_eval_samples)
        tok = start.tokenizer
        model = load_reward_base(start.base, tok)
        trainer, cb = _reward_trainer(ctx, model, tok, start.train_pairs, start.held_out_pairs)
        kept_held_out = _count_kept_pairs(ctx, trainer, start.train_pairs, start.held_out_pairs)
        _train_and_measure(ctx, trainer, tok, trainer.eval_dataset if kept_held_out else None, cb.history)
        return {"reward_model": _save_reward_model(ctx, trainer, tok, start.base, cb.history)}


def _reward_trainer(ctx: StageContext[RewardParams], model: Any, tok: Any, train_ds: Any, eval_ds: Any) -> Any:
    """(RewardTrainer, progress callback); pairs are cut at max_length tokens,
    at most the model's context."""
    from trl import RewardConfig, RewardTrainer

    from ...common.models import max_positions
    from ..trainer_args import training_arguments_kwargs
    from ..trainer_progress import progress_callback, quiet_trainer

    p = ctx.params
    max_pos = max_positions(model)
    max_length = min(p.max_length, max_pos) if max_pos else p.max_length
    kw = training_arguments_kwargs(p, ctx, has_eval=eval_ds is not None)
    cfg = RewardConfig(**kw, max_length=max_length, center_rewards_coefficient=p.center_rewards_coefficient)
    cb = progress_callback(ctx, "reward")
    trainer = RewardTrainer(
        model=model, args=cfg, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tok, callbacks=[cb]
    )
    return quiet_trainer(trainer), cb


def _count_kept_pairs(ctx: StageContext[RewardParams], trainer: Any, train_ds: Any, eval_ds: Any) -> int:
    """Train and held-out pairs the trainer kept (it drops pairs longer than
    max_length) into the metrics; no train pair left is a StageError.
    Returns the number of held-out pairs kept."""
    from ...common.models import max_positions

    max_length = trainer.args.max_length
    n_train, n_eval = len(trainer.train_dataset), len(trainer.eval_dataset) if eval_ds is not None else 0
    ctx.metrics.update(train_pairs=n_train, eval_pairs=n_eval)
    if n_train < len(train_ds) or (eval_ds is not None and n_eval < len(eval_ds)):
        ctx.log.warning(
            "RewardTrainer dropped pairs longer than max_length=%d tokens: %d of %d train, %d of %d held-out kept",
            max_length,
            n_train,
            len(train_ds),
            n_eval,
            len(eval_ds or []),
        )
    if n_train == 0:
        raise StageError(
            f"every training pair is longer than max_length={max_length} tokens; raise max_length "
            f"(the model's context is {max_positions(trainer.model)})"
        )
    return n_eval


def _train_and_measure(
    ctx: StageContext[RewardParams], trainer: Any, tok: Any, held_out: Any, history: list[dict[str, Any]]
) -> None:
    """Train (resuming from a checkpoint), with the held-out pairwise accuracy
    and margin before (fresh start only) and after training."""
    from ..checkpoints import train_from_last_checkpoint
    from ..trainer_progress import history_summary
    from .scoring import pairwise_accuracy

    batch_size = ctx.params.per_device_eval_batch_size

    def accuracy(suffix: str) -> dict[str, float]:
        acc, margin = pairwise_accuracy(trainer.model, held_out, tok.pad_token_id, batch_size)
        return {f"eval_accuracy{suffix}": acc, f"eval_margin{suffix}": margin}

    train_from_last_checkpoint(ctx, trainer, (lambda: accuracy("_before")) if held_out is not None else None)
    ctx.metrics.update(history_summary(history, ["loss", "accuracy", "margin"]))
    if held_out is not None:
        ctx.metrics.update(accuracy(""))
        ctx.log.info(
            "held-out pairwise accuracy %s -> %.3f (%d pairs)",
            ctx.metrics.get("eval_accuracy_before"),
            ctx.metrics["eval_accuracy"],
            len(held_out),
        )


def _save_reward_model(
    ctx: StageContext[RewardParams], trainer: Any, tok: Any, base: str, history: list[dict[str, Any]]
) -> Artifact:
    """The reward model directory (with the pad token it pools on), its loss
    curve and its artifact; under FSDP the weights are gathered from the
    shards (stages/train/fsdp_model.py)."""
    from ...common.models import count_parameters, save_model_dir
    from ..fsdp_model import fsdp_enabled, save_gathered_model
    from ..trainer_progress import save_loss_curve

    model = trainer.model
    out = ctx.output_path("reward_model")
    model.config.pad_token_id = tok.pad_token_id
    if fsdp_enabled(trainer):
        save_gathered_model(ctx, trainer, out)
    else:
        save_model_dir(model, tok, out)
    save_loss_curve(history, out / "loss.png", title="reward model")
    meta: dict[str, Any] = {
        "base_model": base,
        "num_parameters": int(count_parameters(model)),
        "max_length": trainer.args.max_length,
    }
    if "eval_accuracy" in ctx.metrics:
        meta["eval_accuracy"] = ctx.metrics["eval_accuracy"]
    return Artifact(kind=REWARD_MODEL, path=out, meta=meta)
