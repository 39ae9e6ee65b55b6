"""``pretrain``: next-token-prediction training (from scratch or continued) of
a causal LM on packed, fixed-length rows, with transformers' ``Trainer``.

What the Trainer gives for free and this stage relies on: mixed precision,
gradient accumulation / checkpointing, the LR schedule, DeepSpeed / FSDP /
multi-GPU through ``accelerate launch``, report_to (W&B, TensorBoard, MLflow),
and exact resumption (optimizer, scheduler, RNG and data position) from the
last checkpoint in the stage's checkpoint dir.  The stage adds: data checks,
layer freezing, a validation split, tokens/s, the loss curve (metrics + PNG),
and a self-contained model directory (tokenizer carried) as output.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recipe_runner import (
    MAX_POSITIONS,
    MODEL,
    PACKED_DATASET,
    SEQ_LENGTH,
    Artifact,
    Facts,
    Input,
    PlanView,
    Stage,
    StageContext,
)

from ...common.devices import with_cpu_threads
from ...common.tokenizer_digest import TOKENIZER_DIGEST
from ..data_parallel import DataParallelTrainerStage
from .params import PretrainParams


class PretrainStage(DataParallelTrainerStage, Stage[PretrainParams]):
    name = "pretrain"
    version = "2"  # 2: the tokenizer digest in the output's meta
    description = (
        "Pretrain or continue pretraining a causal LM on packed rows with transformers' Trainer "
        "(validation loss/perplexity, tokens/s, loss curve, crash-safe resume)."
    )
    Params = PretrainParams
    inputs = {
        "model": Input(MODEL, description="the model to train (from init/scale or an earlier pretrain)"),
        "dataset": Input(PACKED_DATASET, description="fixed-length training rows ('train', optional 'validation')"),
    }
    outputs = {"model": MODEL}

    @classmethod
    def output_facts(cls, params: PretrainParams, inputs: Mapping[str, Facts]) -> Mapping[str, Facts]:
        return {"model": inputs.get("model", {})}

    @classmethod
    def cross_check(cls, view: PlanView[PretrainParams]) -> list[str]:
        dataset = view.upstream.get("dataset")
        model = view.upstream.get("model")
        seq = dataset.facts.get(SEQ_LENGTH) if dataset else None
        max_pos = model.facts.get(MAX_POSITIONS) if model else None
        if isinstance(seq, int) and isinstance(max_pos, int) and seq > max_pos:
            return [
                f"{view.name}: packed rows of {seq} tokens exceed the model's "
                f"max_position_embeddings ({max_pos}); lower the pack stage's max_seq_length "
                "or raise max_position_embeddings in the init config"
            ]
        return []

    @with_cpu_threads
    def run(self, ctx: StageContext[PretrainParams]) -> dict[str, Artifact]:
        from ...common.models import count_parameters
        from .metrics import final_validation, log_summary, loss_curves, train_loss_ends, training_metrics
        from .outputs import save_trained_model
        from .packed_data import check_rows_fit_model, check_same_tokenizer, load_packed, row_length, training_rows
        from .trainer import (
            build_trainer,
            load_model_to_train,
            load_model_tokenizer,
            prepare_model,
            resume_point,
            stored_dtype,
            train_or_take_checkpoint,
        )

        model_dir = Path(ctx.input("model").path)
        tokenizer = load_model_tokenizer(model_dir)
        tok_digest = check_same_tokenizer(ctx.input("dataset"), ctx.input("model"), tokenizer)
        ds = load_packed(ctx.input("dataset"))
        train, val = training_rows(ctx, ds)
        seq_len = row_length(ds["train"])
        input_dtype = stored_dtype(model_dir)
        resume = resume_point(ctx)
        model = load_model_to_train(model_dir, resume)
        vocab = check_rows_fit_model(model, ds, seq_len)
        trainable = prepare_model(ctx, model)
        trainer = build_trainer(ctx, model, train, val)
        outcome = train_or_take_checkpoint(ctx, trainer, resume)

        metrics: dict[str, Any] = {
            **training_metrics(outcome, _tokens_per_step(trainer, seq_len), seq_len, len(train)),
            "num_parameters": count_parameters(model),
            **trainable,
            **train_loss_ends(outcome.history),
        }
        if val is not None:
            metrics.update(final_validation(trainer, outcome.history, outcome.global_step, len(val)))
        metrics.update(loss_curves(outcome.history))
        ctx.metrics.update(metrics)
        log_summary(ctx, metrics)

        out = save_trained_model(ctx, trainer, model, tokenizer, input_dtype, outcome.history)
        meta = {
            "num_parameters": metrics["num_parameters"],
            "num_layers": model.config.num_hidden_layers,
            "vocab_size": vocab,
            "global_step": outcome.global_step,
        }
        if tok_digest:
            meta[TOKENIZER_DIGEST] = tok_digest
        return {"model": Artifact(MODEL, out, meta=meta)}


def _tokens_per_step(trainer: Any, seq_len: int) -> int:
    """Tokens one optimizer step trains on, across every process."""
    args = trainer.args
    return int(args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size * seq_len)
