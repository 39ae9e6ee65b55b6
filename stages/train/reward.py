"""reward: train a reward model on preference pairs with trl's RewardTrainer
(Bradley-Terry loss: -log sigmoid(r(chosen) - r(rejected))).  The model is a
sequence classifier with one output, initialised from a causal LM; it reports
the pairwise accuracy on held-out pairs before and after training."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from recipe_runner.artifacts import REWARD_MODEL, Artifact
from recipe_runner.stage import Stage, StageContext, StageError

from ..common.devices import with_cpu_threads
from ..common.models import MODEL_INPUT, MODEL_PATH_DESC, model_input_slots
from ..common.training import TrainingParams
from .posttrain_common import (
    DATA_PATH_DESC,
    PREFERENCE_INPUT,
    data_input_slots,
    data_path_fingerprint,
)

HH_DESC = ("split hh-rlhf style texts ('\\n\\nHuman: ...\\n\\nAssistant: ...') into prompt / responses (the prompt "
           "is the text up to the last '\\n\\nAssistant:'): auto = when the data has no prompt column and looks so")


class PreferenceParams(TrainingParams):
    """What every preference-pair trainer (reward, dpo) reads: the starting model and the pairs."""

    model_name_or_path: str | None = Field(None, description=MODEL_PATH_DESC)
    data_path: str | None = Field(None, description=DATA_PATH_DESC)
    prompt_column: str = Field("prompt", description="optional column with the shared prompt (hh-rlhf texts carry "
                                                     "it inside chosen/rejected)")
    chosen_column: str = Field("chosen", description="column with the preferred response (or full text)")
    rejected_column: str = Field("rejected", description="column with the dispreferred response (or full text)")
    hh_format: Literal["auto", "always", "never"] = Field("auto", description=HH_DESC)
    max_length: int = Field(512, ge=8, description="token limit of prompt + response (longer pairs are truncated)")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="held-out share of the pairs when the dataset has no "
                                                              "'validation' split")


class RewardParams(PreferenceParams):
    """Reward-model training settings (plus every PreferenceParams / TrainingParams field)."""

    learning_rate: float = Field(1e-5, gt=0, description="peak learning rate")
    center_rewards_coefficient: float | None = Field(
        None, description="weight of an auxiliary loss that pulls rewards towards zero mean (Eisenstein et al. 2023)")
    max_eval_samples: int | None = Field(500, ge=1, description="cap on held-out pairs (pairwise accuracy)")


class PreferenceStage(Stage):
    """Base of the preference-pair trainers: a model (or model_name_or_path) and pairs (or data_path)."""

    inputs = {"model": MODEL_INPUT, "dataset": PREFERENCE_INPUT}

    @classmethod
    def input_slots(cls, params: PreferenceParams):
        return data_input_slots(params, model_input_slots(params, dict(cls.inputs)))

    @classmethod
    def fingerprint_extra(cls, params: PreferenceParams):
        return data_path_fingerprint(params)


class RewardStage(PreferenceStage):
    name = "reward"
    version = "1"
    description = "Reward model (sequence classifier) on preference pairs with trl's RewardTrainer"
    Params = RewardParams
    outputs = {"reward_model": REWARD_MODEL}

    @with_cpu_threads
    def run(self, ctx: StageContext):
        return run_reward(ctx)


def pairwise_accuracy(model, ds, pad_id: int, batch_size: int = 16) -> tuple[float, float]:
    """(accuracy, mean margin) of r(chosen) > r(rejected) over a dataset
    tokenized by RewardTrainer (columns chosen_ids / rejected_ids), so the
    held-out pairs are scored exactly as the trainer sees them."""
    import torch

    device = next(model.parameters()).device
    model.eval()

    def scores(seqs):
        out = []
        for i in range(0, len(seqs), batch_size):
            chunk = seqs[i:i + batch_size]
            n = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), n), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), n), dtype=torch.long)
            for j, s in enumerate(chunk):
                ids[j, :len(s)] = torch.tensor(s)
                mask[j, :len(s)] = 1
            with torch.no_grad():
                out.extend(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].float().cpu().tolist())
        return out

    c, r = scores(ds["chosen_ids"]), scores(ds["rejected_ids"])
    if not c:
        return float("nan"), float("nan")
    return sum(1 for a, b in zip(c, r) if a > b) / len(c), sum(a - b for a, b in zip(c, r)) / len(c)


def load_reward_base(path: str, tok, dtype=None):
    """A 1-output sequence classifier initialised from a causal LM (or an
    existing reward model), with the pad token the classifier pools on."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype or torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    return model


def run_reward(ctx: StageContext) -> dict[str, Artifact]:
    import torch
    from transformers import PrinterCallback
    from trl import RewardConfig, RewardTrainer

    from ..common.models import load_tokenizer, max_positions, resolve_model_path, save_model_dir
    from ..common.training import last_checkpoint, progress_callback, save_loss_curve, training_arguments_kwargs
    from .posttrain_common import history_summary, load_stage_dataset, prepare_preferences, train_eval_split

    p: RewardParams = ctx.params  # type: ignore[assignment]
    base = resolve_model_path(ctx)
    torch.manual_seed(ctx.seed)
    dsd = load_stage_dataset(ctx)
    train_raw, eval_raw = train_eval_split(dsd, p.eval_fraction, ctx.seed, p.max_eval_samples)
    cols = dict(prompt_col=p.prompt_column, chosen_col=p.chosen_column, rejected_col=p.rejected_column,
                hh_format=p.hh_format)
    train_ds = prepare_preferences(train_raw, ctx, "train", **cols)
    eval_ds = prepare_preferences(eval_raw, ctx, "validation", **cols) if eval_raw is not None else None

    tok = load_tokenizer(base)
    model = load_reward_base(base, tok)
    max_pos = max_positions(model)
    max_length = min(p.max_length, max_pos) if max_pos else p.max_length

    kw = training_arguments_kwargs(p, ctx, has_eval=eval_ds is not None)
    cfg = RewardConfig(**kw, max_length=max_length, center_rewards_coefficient=p.center_rewards_coefficient)
    cb = progress_callback(ctx, "reward")
    trainer = RewardTrainer(model=model, args=cfg, train_dataset=train_ds, eval_dataset=eval_ds,
                            processing_class=tok, callbacks=[cb])
    trainer.remove_callback(PrinterCallback)
    n_train, n_eval = len(trainer.train_dataset), len(trainer.eval_dataset) if eval_ds is not None else 0
    ctx.metrics.update(train_pairs=n_train, eval_pairs=n_eval)
    if n_train < len(train_ds) or (eval_ds is not None and n_eval < len(eval_ds)):
        ctx.log.warning("RewardTrainer dropped pairs longer than max_length=%d tokens: %d of %d train, %d of %d "
                        "held-out kept", max_length, n_train, len(train_ds), n_eval, len(eval_ds or []))
    if n_train == 0:
        raise StageError(f"every training pair is longer than max_length={max_length} tokens; raise max_length "
                         f"(the model's context is {max_pos})")
    if n_eval == 0:
        eval_ds = None
    resume = last_checkpoint(ctx)
    if eval_ds is not None and resume is None:
        acc0, m0 = pairwise_accuracy(model, trainer.eval_dataset, tok.pad_token_id, p.per_device_eval_batch_size)
        ctx.metrics.update(eval_accuracy_before=acc0, eval_margin_before=m0)
    result = trainer.train(resume_from_checkpoint=resume)
    ctx.metrics.update(train_loss=float(result.training_loss), train_steps=int(result.global_step))
    ctx.metrics.update(history_summary(cb.history, ["loss", "accuracy", "margin"]))
    model = trainer.model
    if eval_ds is not None:
        acc, margin = pairwise_accuracy(model, trainer.eval_dataset, tok.pad_token_id, p.per_device_eval_batch_size)
        ctx.metrics.update(eval_accuracy=acc, eval_margin=margin)
        ctx.log.info("held-out pairwise accuracy %s -> %.3f (%d pairs)", ctx.metrics.get("eval_accuracy_before"),
                     acc, n_eval)

    out = ctx.output_path("reward_model")
    model.config.pad_token_id = tok.pad_token_id
    save_model_dir(model, tok, out)
    save_loss_curve(cb.history, out / "loss.png", title="reward model")
    meta = {"base_model": base, "num_parameters": int(sum(x.numel() for x in model.parameters())),
            "max_length": max_length}
    if "eval_accuracy" in ctx.metrics:
        meta["eval_accuracy"] = ctx.metrics["eval_accuracy"]
    return {"reward_model": Artifact(kind=REWARD_MODEL, path=out, meta=meta)}
