"""sft: supervised fine-tuning with trl's SFTTrainer -- full fine-tuning,
LoRA or QLoRA -- on instruction (Alpaca), chat (messages), prompt/completion
or plain-text data, with the loss on the completion only, optional packing,
validation loss, sample generations and an optional merged model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recipe_runner import ADAPTER, DATASET, MODEL, Artifact, Input, PlanView, StageContext

from ...common.devices import with_cpu_threads
from ...common.models import MODEL_INPUT, local_path
from ..data_parallel import DataParallelTrainerStage
from ..fine_tuning import FineTuningStage
from .chat_templates import CHAT_TEMPLATES, names_a_template
from .params import SFTParams
from .trainer import SFTSetup


class SFTStage(DataParallelTrainerStage, FineTuningStage[SFTParams]):
    name = "sft"
    version = "1"
    description = "Supervised fine-tuning (full, LoRA, QLoRA) with trl's SFTTrainer"
    Params = SFTParams
    inputs = {
        "model": MODEL_INPUT,
        "dataset": Input(DATASET, description="instruction / chat / prompt-completion / text examples"),
    }
    outputs = {"adapter": ADAPTER, "model": MODEL}

    @classmethod
    def output_slots(cls, params: SFTParams) -> Mapping[str, str]:
        if params.method == "full":
            return {"model": MODEL}
        return {"adapter": ADAPTER, "model": MODEL} if params.merge else {"adapter": ADAPTER}

    @classmethod
    def local_inputs(cls, params: SFTParams) -> Mapping[str, Path]:
        """Those of every fine-tuning stage, and a chat template file (a shipped template is named, not a file)."""
        out = dict(super().local_inputs(params))
        template = None if params.chat_template in CHAT_TEMPLATES else local_path(params.chat_template)
        if template is not None:
            out["chat_template"] = template
        return out

    @classmethod
    def cross_check(cls, view: PlanView[SFTParams]) -> list[str]:
        p = view.params
        errs = []
        if p.method == "qlora" and p.device == "cpu":
            errs.append(f"stage {view.name!r}: method qlora needs a CUDA GPU (bitsandbytes 4-bit), but device is 'cpu'")
        if p.chat_template and not names_a_template(p.chat_template):
            errs.append(
                f"stage {view.name!r}: chat_template {p.chat_template!r} is neither a shipped template "
                f"({', '.join(CHAT_TEMPLATES)}) nor a .jinja file"
            )
        return errs

    @with_cpu_threads
    def run(self, ctx: StageContext[SFTParams]) -> dict[str, Artifact]:
        import torch

        from ...common.models import resolve_model_path
        from ..trainer_progress import progress_callback, save_loss_curve
        from .trainer import build_sft_trainer

        p = ctx.params
        base_path = resolve_model_path(ctx)
        torch.manual_seed(ctx.seed)
        cb = progress_callback(ctx, f"sft ({p.method})")
        setup = build_sft_trainer(ctx, base_path, callbacks=[cb])
        ctx.metrics.update(setup.info)
        ctx.metrics["method"] = p.method
        if p.method != "full":
            _report_trainable_share(ctx, setup.trainer.model)
        _train_and_measure(ctx, setup.trainer, cb.history, has_eval=setup.eval_dataset is not None)
        outputs = _save_outputs(ctx, setup, base_path)
        main_dir = outputs["model" if p.method == "full" else "adapter"].path
        save_loss_curve(cb.history, main_dir / "loss.png", title=f"sft ({p.method})")
        return outputs


def _report_trainable_share(ctx: StageContext[SFTParams], model: Any) -> None:
    from ..lora import trainable_share

    share = trainable_share(model)
    ctx.metrics.update(share)
    n_train, n_all = share["trainable_parameters"], share["total_parameters"]
    ctx.log.info("LoRA: %d trainable of %d parameters (%.2f%%)", n_train, n_all, 100 * n_train / max(1, n_all))


def _train_and_measure(
    ctx: StageContext[SFTParams], trainer: Any, history: list[dict[str, Any]], has_eval: bool
) -> None:
    """Train (resuming from a checkpoint), with the validation loss before
    (fresh start only) and after training."""
    from ..checkpoints import train_from_last_checkpoint
    from ..trainer_progress import history_summary

    def validation_loss(key: str) -> dict[str, float]:
        return {key: float(trainer.evaluate()["eval_loss"])}

    train_from_last_checkpoint(ctx, trainer, (lambda: validation_loss("eval_loss_before")) if has_eval else None)
    ctx.metrics.update(history_summary(history, ["loss"]))
    if has_eval:
        ctx.metrics.update(validation_loss("eval_loss"))
        ctx.log.info("validation loss %s -> %.4f", ctx.metrics.get("eval_loss_before"), ctx.metrics["eval_loss"])


def _save_outputs(ctx: StageContext[SFTParams], setup: SFTSetup, base_path: str) -> dict[str, Artifact]:
    """The fine-tuned model (full), or the adapter and the merged model when
    asked; sample generations go next to the main output."""
    from ...common.models import save_model_artifact
    from ..fsdp_model import fsdp_enabled
    from .outputs import merge_adapter, save_adapter
    from .samples import write_samples

    p = ctx.params
    if fsdp_enabled(setup.trainer):
        return _save_gathered_outputs(ctx, setup, base_path)
    model, tok = setup.trainer.model, setup.tokenizer
    sample_from = setup.eval_dataset if setup.eval_dataset is not None else setup.train_dataset
    if p.method == "full":
        main_dir = ctx.output_path("model")
        write_samples(ctx, model, tok, sample_from, main_dir)
        return {"model": save_model_artifact(model, tok, main_dir, base_model=base_path, method="full")}
    main_dir = ctx.output_path("adapter")
    write_samples(ctx, model, tok, sample_from, main_dir)
    outputs = {"adapter": save_adapter(ctx, model, tok, main_dir, base_path)}
    if p.merge:
        merged = merge_adapter(base_path, main_dir, p, model)
        outputs["model"] = save_model_artifact(
            merged, tok, ctx.output_path("model"), base_model=base_path, method=f"{p.method}+merge"
        )
    return outputs


def _save_gathered_outputs(ctx: StageContext[SFTParams], setup: SFTSetup, base_path: str) -> dict[str, Artifact]:
    """Under FSDP: the model (full) or adapter gathered from the shards and
    written by rank 0, samples generated by every rank in step with the
    sharded model, and the merged model built by rank 0 from the saved
    adapter (the sharded model cannot merge in place)."""
    from ...common.models import model_meta
    from ..fsdp_model import save_gathered_model
    from .outputs import adapter_artifact, merge_adapter
    from .samples import write_samples

    p = ctx.params
    model, tok = setup.trainer.model, setup.tokenizer
    main_dir = ctx.output_path("model" if p.method == "full" else "adapter")
    rank0 = save_gathered_model(ctx, setup.trainer, main_dir)
    write_samples(
        ctx, model, tok, setup.eval_dataset if setup.eval_dataset is not None else setup.train_dataset, main_dir
    )
    if p.method == "full":
        meta = {**model_meta(model, tok), "base_model": base_path, "method": "full"}
        return {"model": Artifact(kind=MODEL, path=main_dir, meta=meta)}
    outputs = {"adapter": adapter_artifact(ctx, main_dir, base_path)}
    if p.merge and rank0:
        from ...common.models import save_model_artifact

        merged = merge_adapter(base_path, main_dir, p, None)
        outputs["model"] = save_model_artifact(
            merged, tok, ctx.output_path("model"), base_model=base_path, method=f"{p.method}+merge"
        )
    return outputs
