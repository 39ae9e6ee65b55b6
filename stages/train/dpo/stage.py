"""dpo: Direct Preference Optimization with trl's DPOTrainer.  The policy
starts from the input model (usually the SFT model); a frozen copy of it is
the reference.  Reports the implicit reward margins and accuracies on
held-out pairs before and after training."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from recipe_runner import MODEL, Artifact, StageContext

from ...common.devices import with_cpu_threads
from ..data_parallel import DataParallelTrainerStage
from ..lora import LoraParams
from ..preference.params import PreferenceParams
from ..preference.stage import PreferenceStage

DPOLoss = Literal[
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
]

#: DPOTrainer's logged quantities reported before and after training
REWARD_KEYS = ["rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected"]


class DPOParams(PreferenceParams):
    """DPO settings (plus every PreferenceParams / TrainingParams field)."""

    beta: float = Field(
        0.1, gt=0, description="strength of the implicit KL constraint to the reference model (higher: stay closer)"
    )
    loss_type: DPOLoss = Field(
        "sigmoid", description="sigmoid: the DPO paper's loss; ipo, hinge, robust, ... as in trl"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="conservative DPO / robust: assumed label-noise rate")
    learning_rate: float = Field(
        5e-6, gt=0, description="peak learning rate (DPO uses small ones: 5e-7..5e-6 for real models)"
    )
    lora: LoraParams | None = Field(
        None,
        description="train a LoRA adapter instead of all weights (the reference is then the base with the adapter "
        "disabled); merged on output",
    )
    max_eval_samples: int | None = Field(200, ge=1, description="cap on held-out pairs")


class DPOStage(DataParallelTrainerStage, PreferenceStage[DPOParams]):
    name = "dpo"
    version = "1"
    description = "Direct Preference Optimization with trl's DPOTrainer (policy + frozen reference)"
    Params = DPOParams
    outputs = {"model": MODEL}

    @with_cpu_threads
    def run(self, ctx: StageContext[DPOParams]) -> dict[str, Artifact]:
        from ..preference.stage import start_preference_run

        start = start_preference_run(ctx, ctx.params, ctx.params.max_eval_samples)
        train_ds, eval_ds = start.train_pairs, start.held_out_pairs
        trainer, cb = _dpo_trainer(ctx, start.base, start.tokenizer, train_ds, eval_ds)
        _train_and_measure(ctx, trainer, cb.history, len(train_ds), len(eval_ds) if eval_ds is not None else 0)
        return {"model": _save_policy(ctx, trainer, start.tokenizer, start.base, cb.history)}


def _dpo_trainer(ctx: StageContext[DPOParams], base: str, tok: Any, train_ds: Any, eval_ds: Any) -> Any:
    """(DPOTrainer, progress callback): the policy and, without LoRA, a frozen
    second copy of the starting model as the reference (with LoRA, trl uses
    the base with the adapter disabled instead)."""
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from ...common.models import max_positions
    from ..trainer_args import training_arguments_kwargs
    from ..trainer_progress import progress_callback, quiet_trainer

    p = ctx.params
    dtype = _policy_dtype(p)
    policy = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    ref = None
    if p.lora is None:
        ref = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        ref.requires_grad_(False).eval()
    max_pos = max_positions(policy)
    kw = training_arguments_kwargs(p, ctx, has_eval=eval_ds is not None)
    cfg = DPOConfig(
        **kw,
        beta=p.beta,
        loss_type=[p.loss_type],
        label_smoothing=p.label_smoothing,
        max_length=min(p.max_length, max_pos) if max_pos else p.max_length,
    )
    cb = progress_callback(ctx, "dpo")
    trainer = DPOTrainer(
        model=policy,
        ref_model=ref,
        args=cfg,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tok,
        peft_config=p.lora.to_peft() if p.lora else None,
        callbacks=[cb],
    )
    return quiet_trainer(trainer), cb


def _policy_dtype(p: DPOParams) -> Any:
    """bf16 weights for a LoRA policy where the device computes in bf16, else float32."""
    import torch

    from ...common.devices import resolve_device, resolve_precision

    precision = resolve_precision(p.precision, resolve_device(p.device))
    return torch.bfloat16 if (precision == "bf16" and p.lora is not None) else torch.float32


def _train_and_measure(
    ctx: StageContext[DPOParams], trainer: Any, history: list[dict[str, Any]], train_pairs: int, eval_pairs: int
) -> None:
    """Train (resuming from a checkpoint), with the held-out loss and implicit
    rewards before (fresh start only) and after training."""
    from ..checkpoints import train_from_last_checkpoint
    from ..trainer_progress import history_summary

    has_eval = eval_pairs > 0
    train_from_last_checkpoint(ctx, trainer, (lambda: _held_out_rewards(trainer, "before_")) if has_eval else None)
    ctx.metrics.update(train_pairs=train_pairs, eval_pairs=eval_pairs)
    ctx.metrics.update(history_summary(history, ["loss", "rewards/margins", "rewards/accuracies"]))
    if has_eval:
        ctx.metrics.update(_held_out_rewards(trainer, "after_"))
        m = ctx.metrics
        ctx.log.info(
            "held-out reward margin %.4f -> %.4f, accuracy %.3f -> %.3f",
            m.get("before_rewards_margins", float("nan")),
            m.get("after_rewards_margins", float("nan")),
            m.get("before_rewards_accuracies", float("nan")),
            m.get("after_rewards_accuracies", float("nan")),
        )


def _held_out_rewards(trainer: Any, prefix: str) -> dict[str, float]:
    """The held-out DPO loss and implicit rewards, keys prefixed (``before_loss``, ...)."""
    ev = trainer.evaluate()
    out = {f"{prefix}loss": float(ev["eval_loss"])}
    for k in REWARD_KEYS:
        if f"eval_{k}" in ev:
            out[prefix + k.replace("/", "_")] = float(ev[f"eval_{k}"])
    return out


def _save_policy(
    ctx: StageContext[DPOParams], trainer: Any, tok: Any, base: str, history: list[dict[str, Any]]
) -> Artifact:
    """The trained policy as a model directory (a LoRA adapter merged into it,
    float32 on a CPU) with its loss curve; under FSDP the weights are
    gathered from the shards (stages/train/fsdp_model.py)."""
    import torch

    from ...common.devices import resolve_device
    from ...common.models import save_model_artifact
    from ..fsdp_model import fsdp_enabled
    from ..trainer_progress import save_loss_curve

    p, model = ctx.params, trainer.model
    meta = {"base_model": base, "method": "dpo", "beta": p.beta, "loss_type": p.loss_type}
    out = ctx.output_path("model")
    if fsdp_enabled(trainer):
        art = _save_gathered_policy(ctx, trainer, tok, out, meta)
        save_loss_curve(history, out / "loss.png", title="dpo")
        return art
    if p.lora is not None:
        model = model.merge_and_unload()
    if model.dtype != torch.float32 and resolve_device(p.device) == "cpu":
        model = model.to(torch.float32)
    art = save_model_artifact(model, tok, out, **meta)
    save_loss_curve(history, out / "loss.png", title="dpo")
    return art


def _save_gathered_policy(
    ctx: StageContext[DPOParams], trainer: Any, tok: Any, out: Path, meta: dict[str, Any]
) -> Artifact:
    """Under FSDP: the policy gathered from the shards into ``out`` (rank 0
    writes); a LoRA adapter is gathered into a temporary directory and rank 0
    merges it into a float32 copy of the base (the sharded model cannot merge
    in place)."""
    import tempfile

    import torch

    from ...common.models import model_meta, save_model_artifact
    from ..fsdp_model import save_gathered_model
    from ..lora import merge_saved_adapter

    if ctx.params.lora is None:
        save_gathered_model(ctx, trainer, out)
        return Artifact(kind=MODEL, path=out, meta={**model_meta(trainer.model, tok), **meta})
    with tempfile.TemporaryDirectory(prefix="dpo-adapter-") as adapter_dir:
        if not save_gathered_model(ctx, trainer, Path(adapter_dir)):
            return Artifact(kind=MODEL, path=out, meta=meta)  # not rank 0: the runner commits rank 0's output
        merged = merge_saved_adapter(meta["base_model"], adapter_dir, torch.float32)
    return save_model_artifact(merged, tok, out, **meta)
