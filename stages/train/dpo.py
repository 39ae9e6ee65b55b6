"""dpo: Direct Preference Optimization with trl's DPOTrainer.  The policy
starts from the input model (usually the SFT model); a frozen copy of it is
the reference.  Reports the implicit reward margins and accuracies on
held-out pairs before and after training."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from recipe_runner.artifacts import MODEL, Artifact
from recipe_runner.stage import StageContext

from ..common.devices import with_cpu_threads
from .posttrain_common import LoraParams
from .reward import PreferenceParams, PreferenceStage

DPOLoss = Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm"]


class DPOParams(PreferenceParams):
    """DPO settings (plus every PreferenceParams / TrainingParams field)."""

    beta: float = Field(0.1, gt=0, description="strength of the implicit KL constraint to the reference model "
                                               "(higher: stay closer)")
    loss_type: DPOLoss = Field("sigmoid", description="sigmoid: the DPO paper's loss; ipo, hinge, robust, ... as in trl")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="conservative DPO / robust: assumed label-noise rate")
    learning_rate: float = Field(5e-6, gt=0, description="peak learning rate (DPO uses small ones: 5e-7..5e-6 for real models)")
    lora: LoraParams | None = Field(None, description="train a LoRA adapter instead of all weights (the reference "
                                                      "is then the base with the adapter disabled); merged on output")
    max_eval_samples: int | None = Field(200, ge=1, description="cap on held-out pairs")


class DPOStage(PreferenceStage):
    name = "dpo"
    version = "1"
    description = "Direct Preference Optimization with trl's DPOTrainer (policy + frozen reference)"
    Params = DPOParams
    outputs = {"model": MODEL}

    @with_cpu_threads
    def run(self, ctx: StageContext):
        return run_dpo(ctx)


_KEYS = ["rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected"]


def _eval_metrics(trainer, prefix: str) -> dict[str, float]:
    ev = trainer.evaluate()
    out = {f"{prefix}loss": float(ev["eval_loss"])}
    for k in _KEYS:
        if f"eval_{k}" in ev:
            out[prefix + k.replace("/", "_")] = float(ev[f"eval_{k}"])
    return out


def run_dpo(ctx: StageContext) -> dict[str, Artifact]:
    import torch
    from transformers import AutoModelForCausalLM, PrinterCallback
    from trl import DPOConfig, DPOTrainer

    from ..common.devices import resolve_device, resolve_precision
    from ..common.models import load_tokenizer, max_positions, resolve_model_path, save_model_artifact
    from ..common.training import last_checkpoint, progress_callback, save_loss_curve, training_arguments_kwargs
    from .posttrain_common import history_summary, load_stage_dataset, prepare_preferences, train_eval_split

    p: DPOParams = ctx.params  # type: ignore[assignment]
    base = resolve_model_path(ctx)
    torch.manual_seed(ctx.seed)
    dsd = load_stage_dataset(ctx)
    train_raw, eval_raw = train_eval_split(dsd, p.eval_fraction, ctx.seed, p.max_eval_samples)
    cols = dict(prompt_col=p.prompt_column, chosen_col=p.chosen_column, rejected_col=p.rejected_column,
                hh_format=p.hh_format)
    train_ds = prepare_preferences(train_raw, ctx, "train", **cols)
    eval_ds = prepare_preferences(eval_raw, ctx, "validation", **cols) if eval_raw is not None else None

    device = resolve_device(p.device)
    precision = resolve_precision(p.precision, device)
    dtype = torch.bfloat16 if (precision == "bf16" and p.lora is not None) else torch.float32
    tok = load_tokenizer(base)
    policy = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    # the frozen reference: a second copy of the starting model (with LoRA,
    # trl uses the base with the adapter disabled instead)
    ref = None
    if p.lora is None:
        ref = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        ref.requires_grad_(False).eval()
    max_pos = max_positions(policy)
    max_length = min(p.max_length, max_pos) if max_pos else p.max_length

    kw = training_arguments_kwargs(p, ctx, has_eval=eval_ds is not None)
    cfg = DPOConfig(**kw, beta=p.beta, loss_type=[p.loss_type], label_smoothing=p.label_smoothing,
                    max_length=max_length)
    cb = progress_callback(ctx, "dpo")
    trainer = DPOTrainer(model=policy, ref_model=ref, args=cfg, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tok, peft_config=p.lora.to_peft() if p.lora else None, callbacks=[cb])
    trainer.remove_callback(PrinterCallback)
    resume = last_checkpoint(ctx)
    if eval_ds is not None and resume is None:
        ctx.metrics.update(_eval_metrics(trainer, "before_"))
    result = trainer.train(resume_from_checkpoint=resume)
    ctx.metrics.update(train_loss=float(result.training_loss), train_steps=int(result.global_step),
                       train_pairs=len(train_ds), eval_pairs=len(eval_ds) if eval_ds is not None else 0)
    ctx.metrics.update(history_summary(cb.history, ["loss", "rewards/margins", "rewards/accuracies"]))
    if eval_ds is not None:
        ctx.metrics.update(_eval_metrics(trainer, "after_"))
        ctx.log.info("held-out reward margin %.4f -> %.4f, accuracy %.3f -> %.3f",
                     ctx.metrics.get("before_rewards_margins", float("nan")),
                     ctx.metrics.get("after_rewards_margins", float("nan")),
                     ctx.metrics.get("before_rewards_accuracies", float("nan")),
                     ctx.metrics.get("after_rewards_accuracies", float("nan")))
    model = trainer.model
    if p.lora is not None:
        model = model.merge_and_unload()
    if model.dtype != torch.float32 and device == "cpu":
        model = model.to(torch.float32)
    out = ctx.output_path("model")
    art = save_model_artifact(model, tok, out, base_model=base, method="dpo", beta=p.beta, loss_type=p.loss_type)
    save_loss_curve(cb.history, out / "loss.png", title="dpo")
    return {"model": art}
