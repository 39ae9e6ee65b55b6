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

import json
from collections.abc import Mapping
import math
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from recipe_runner.artifacts import MODEL, PACKED_DATASET, Artifact
from recipe_runner import MAX_POSITIONS, SEQ_LENGTH, Facts
from recipe_runner.stage import Input, PlanView, Stage, StageContext, StageError

from ..common.devices import with_cpu_threads
from ..common.models import MODEL_COLUMNS
from ..common.training import TrainingParams


class PretrainParams(TrainingParams):
    validation_fraction: float = Field(
        0.0, ge=0, lt=1,
        description="fraction of the training rows held out for validation when the packed dataset has no "
        "'validation' split (0 = none)",
    )
    max_eval_samples: int | None = Field(
        None, ge=1, description="cap on validation rows (validation is a full forward pass over them)"
    )
    train_top_layers: int | None = Field(
        None, ge=0,
        description="layer freezing: train only the top k decoder layers, the final norm and the LM head; "
        "everything below is frozen (None = train everything)",
    )
    freeze_embeddings: bool = Field(
        False, description="freeze the input embeddings (with tied embeddings this freezes the head too)"
    )
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="dtype of the saved weights: 'auto' keeps the input model's dtype; training always keeps "
        "float32 master weights (bf16 autocast where the device has it)",
    )


def freeze_layers(model, train_top_layers: int | None, freeze_embeddings: bool) -> dict[str, int]:
    """Layer freezing as in the Llama-2 instruction-tuning recipe: only the top
    ``train_top_layers`` decoder layers, the final norm and the head learn;
    optionally the input embeddings are frozen too."""
    from ..common.models import decoder_layers

    if train_top_layers is not None:
        owner, attr = decoder_layers(model)
        layers = getattr(owner, attr)
        if train_top_layers > len(layers):
            raise StageError(f"pretrain: train_top_layers={train_top_layers} but the model has {len(layers)} layers")
        for param in model.parameters():
            param.requires_grad_(False)
        for layer in list(layers)[len(layers) - train_top_layers:]:
            for param in layer.parameters():
                param.requires_grad_(True)
        layer_params = {id(q) for q in layers.parameters()}
        emb = {id(q) for q in model.get_input_embeddings().parameters()}
        # everything that is neither a decoder layer nor the input embedding:
        # final norm, LM head (and e.g. GPT-2's final ln_f)
        for param in model.parameters():
            if id(param) not in layer_params and id(param) not in emb:
                param.requires_grad_(True)
        if not freeze_embeddings and model.get_output_embeddings() is not None:
            for param in model.get_output_embeddings().parameters():
                param.requires_grad_(True)
    if freeze_embeddings:
        for param in model.get_input_embeddings().parameters():
            param.requires_grad_(False)
    trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
    total = sum(q.numel() for q in model.parameters())
    return {"trainable_parameters": trainable, "total_parameters": total}


def load_packed(path: Path) -> Any:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise StageError(f"pretrain: cannot read the packed dataset at {path}: {e}") from None
    if not isinstance(ds, DatasetDict):
        ds = DatasetDict({"train": ds})
    if "train" not in ds:
        raise StageError(f"pretrain: packed dataset {path} has no 'train' split (splits: {list(ds)})")
    if "input_ids" not in ds["train"].column_names:
        raise StageError(f"pretrain: packed dataset {path} has no 'input_ids' column "
                         f"(columns: {ds['train'].column_names})")
    return ds


def max_token_id(ds) -> int:
    """Largest token id in a dataset's input_ids (Arrow compute, no Python loop)."""
    import pyarrow.compute as pc

    col = ds.data.column("input_ids")
    flat = pc.list_flatten(col)
    value = pc.max(flat).as_py()
    return -1 if value is None else int(value)


def row_length(ds) -> int:
    import pyarrow.compute as pc

    lengths = pc.list_value_length(ds.data.column("input_ids"))
    return int(pc.max(lengths).as_py() or 0)


def lm_collator(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack fixed-length rows; labels = input_ids where the data has none
    (the model shifts them), with padded positions (attention_mask 0) ignored."""
    import torch

    batch = {key: torch.stack([torch.as_tensor(r[key]) for r in rows]) for key in rows[0]}
    if "labels" not in batch:
        labels = batch["input_ids"].clone()
        if "attention_mask" in batch:
            labels[batch["attention_mask"] == 0] = -100
        batch["labels"] = labels
    return batch


def _downsample(points: list[list[float]], n: int = 60) -> list[list[float]]:
    if len(points) <= n:
        return points
    step = (len(points) - 1) / (n - 1)
    return [points[round(i * step)] for i in range(n)]


class PretrainStage(Stage):
    name = "pretrain"
    version = "1"
    description = ("Pretrain or continue pretraining a causal LM on packed rows with transformers' Trainer "
                   "(validation loss/perplexity, tokens/s, loss curve, crash-safe resume).")
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
            return [f"{view.name}: packed rows of {seq} tokens exceed the model's "
                    f"max_position_embeddings ({max_pos}); lower the pack stage's max_seq_length "
                    "or raise max_position_embeddings in the init config"]
        return []

    @with_cpu_threads
    def run(self, ctx: StageContext) -> dict[str, Artifact]:
        import torch
        from transformers import AutoModelForCausalLM, PrinterCallback, Trainer, TrainerCallback, TrainingArguments

        from ..common.models import count_parameters, load_tokenizer, save_model_dir
        from ..common.training import last_checkpoint, progress_callback, save_loss_curve, training_arguments_kwargs

        p: PretrainParams = ctx.params  # type: ignore[assignment]
        model_dir = Path(ctx.input("model").path)
        ds = load_packed(Path(ctx.input("dataset").path))

        # ---- data
        train = ds["train"]
        if len(train) == 0:
            raise StageError("pretrain: the packed 'train' split is empty")
        val = ds["validation"] if "validation" in ds and len(ds["validation"]) else None
        if val is None and p.validation_fraction > 0:
            n_val = max(1, int(round(len(train) * p.validation_fraction)))
            if n_val >= len(train):
                raise StageError(f"pretrain: validation_fraction {p.validation_fraction} leaves no training rows "
                                 f"({len(train)} rows)")
            split = train.train_test_split(test_size=n_val, seed=ctx.seed, shuffle=True)
            train, val = split["train"], split["test"]
            ctx.log.info("held out %d of %d rows for validation", n_val, n_val + len(train))
        if val is not None and p.max_eval_samples and len(val) > p.max_eval_samples:
            val = val.select(range(p.max_eval_samples))
        keep = [c for c in MODEL_COLUMNS if c in train.column_names]
        train = train.select_columns(keep).with_format("torch")
        if val is not None:
            val = val.select_columns([c for c in MODEL_COLUMNS if c in val.column_names]).with_format("torch")
        seq_len = row_length(ds["train"])

        # ---- model
        cfg = json.loads((model_dir / "config.json").read_text()) if (model_dir / "config.json").is_file() else {}
        stored_dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
        # a checkpoint that already reached max_steps (killed after the last save, before the output was
        # written): load it instead of training -- resuming there would run one step past max_steps
        ckpt = last_checkpoint(ctx)
        ckpt_state = json.loads((Path(ckpt) / "trainer_state.json").read_text()) if ckpt else {}
        finished = bool(ckpt) and p.max_steps > 0 and ckpt_state.get("global_step", 0) >= p.max_steps
        try:
            model = AutoModelForCausalLM.from_pretrained(str(ckpt if finished else model_dir), dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise StageError(f"pretrain: cannot load the model at {model_dir}: {e}") from None
        tokenizer = None
        if (model_dir / "tokenizer_config.json").exists() or (model_dir / "tokenizer.json").exists():
            tokenizer = load_tokenizer(model_dir)
        max_pos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        if max_pos and seq_len > max_pos:
            raise StageError(f"pretrain: packed rows of {seq_len} tokens exceed the model's max_position_embeddings "
                             f"({max_pos}); pack shorter rows or raise max_position_embeddings at init")
        vocab = model.get_input_embeddings().weight.shape[0]
        top = max(max_token_id(ds["train"]), max_token_id(ds["validation"]) if "validation" in ds else -1)
        if top >= vocab:
            raise StageError(f"pretrain: the packed data holds token id {top} but the model embeds only {vocab} "
                             "tokens: the data was tokenized with a different tokenizer than the model's")
        model.config.use_cache = False
        freeze = freeze_layers(model, p.train_top_layers, p.freeze_embeddings)
        if p.train_top_layers is not None or p.freeze_embeddings:
            ctx.log.info("layer freezing: %s of %s parameters trainable", f"{freeze['trainable_parameters']:,}",
                         f"{freeze['total_parameters']:,}")
            if p.gradient_checkpointing:
                model.enable_input_require_grads()

        # ---- trainer
        kwargs = training_arguments_kwargs(p, ctx, has_eval=val is not None)
        kwargs["remove_unused_columns"] = False
        args = TrainingArguments(**kwargs)
        callback = progress_callback(ctx, "pretrain")
        trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                          data_collator=lm_collator, callbacks=[callback])
        trainer.remove_callback(PrinterCallback)  # the progress callback logs each step already

        class _Perplexity(TrainerCallback):
            """Validation perplexity next to each periodic validation loss."""

            def on_evaluate(self, args, state, control, metrics=None, **kw):
                if metrics and "eval_loss" in metrics:
                    ppl = math.exp(min(metrics["eval_loss"], 50.0))
                    metrics["eval_perplexity"] = ppl
                    ctx.log.info("step %d: validation loss %.4f, perplexity %.2f", state.global_step,
                                 metrics["eval_loss"], ppl)

        trainer.add_callback(_Perplexity())
        start_step = int(ckpt_state.get("global_step", 0)) if ckpt else 0
        t0, c0 = time.perf_counter(), time.process_time()
        if finished:
            ctx.log.info("checkpoint %s already reached max_steps (%d): no further training", ckpt, p.max_steps)
            global_step, history = start_step, list(ckpt_state.get("log_history", []))
            logged = [h["loss"] for h in history if "loss" in h]
            train_loss, runtime = (float(logged[-1]) if logged else None), 0.0
        else:
            if ckpt:
                ctx.log.info("pretrain resumes at step %d of %s", start_step, p.max_steps)
            result = trainer.train(resume_from_checkpoint=ckpt)
            global_step, history = trainer.state.global_step, list(trainer.state.log_history)
            train_loss = float(result.training_loss)
            runtime = float(result.metrics.get("train_runtime", time.perf_counter() - t0))
        cpu = time.process_time() - c0
        steps_run = global_step - start_step
        world = args.world_size
        tokens_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * world * seq_len
        tok_s = steps_run * tokens_per_step / runtime if runtime > 0 else 0.0

        metrics: dict[str, Any] = {
            "global_step": global_step,
            "steps_this_run": steps_run,
            **({"train_loss": train_loss} if train_loss is not None else {}),
            "train_runtime_s": round(runtime, 3),
            "train_cpu_s": round(cpu, 3),  # this process's CPU time in trainer.train (load-independent on a shared host)
            "tokens_per_second": round(tok_s, 1),
            "tokens_trained": global_step * tokens_per_step,
            "seq_len": seq_len,
            "train_rows": len(train),
            "num_parameters": count_parameters(model),
            **freeze,
        }
        losses = [[h["step"], round(h["loss"], 4)] for h in history if "loss" in h]
        if losses:
            metrics["final_train_loss"] = losses[-1][1]
            metrics["first_train_loss"] = losses[0][1]
        if val is not None:
            ev = trainer.evaluate()
            history.append({"step": global_step, **ev})
            metrics["eval_loss"] = float(ev["eval_loss"])
            metrics["perplexity"] = float(math.exp(min(ev["eval_loss"], 50.0)))
            metrics["validation_rows"] = len(val)
        by_step = {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}  # final eval may repeat a step
        evals = [[step, round(loss, 4), round(math.exp(min(loss, 50.0)), 3)] for step, loss in by_step.items()]
        metrics["loss_curve"] = _downsample(losses)
        if evals:
            metrics["eval_curve"] = _downsample(evals)
        ctx.metrics.update(metrics)
        ctx.log.info("pretrain: %d steps, %.0f tokens/s, train loss %.4f%s", global_step, tok_s,
                     metrics.get("final_train_loss", float("nan")),
                     f", validation loss {metrics['eval_loss']:.4f} (ppl {metrics['perplexity']:.2f})"
                     if "eval_loss" in metrics else "")

        # ---- output (rank 0 writes; save_model gathers DeepSpeed / FSDP shards)
        out = ctx.output_path("model")
        distributed = world > 1 or p.deepspeed is not None or bool(p.fsdp)
        if distributed:
            trainer.save_model(str(out))
        if trainer.is_world_process_zero():
            model.config.use_cache = True
            save_dtype = stored_dtype if p.save_dtype == "auto" else p.save_dtype
            if not distributed:
                to_save = trainer.model
                if save_dtype in ("bfloat16", "float16"):
                    to_save = to_save.to(getattr(torch, save_dtype))
                save_model_dir(to_save, tokenizer, out)
            elif tokenizer is not None:
                tokenizer.save_pretrained(str(out))
                model.config.save_pretrained(str(out))
            (out / "training_args.bin").unlink(missing_ok=True)
            (out / "trainer_history.json").write_text(json.dumps(history, indent=1))
            save_loss_curve(history, out / "loss_curve.png", title=f"{ctx.name}: loss")
        meta = {"num_parameters": metrics["num_parameters"], "num_layers": model.config.num_hidden_layers,
                "vocab_size": int(vocab), "global_step": global_step}
        return {"model": Artifact(MODEL, out, meta=meta)}
