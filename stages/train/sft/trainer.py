"""What the sft stage trains with: its examples in trl's format, the model
(full precision, bf16 for LoRA where the device has it, 4-bit for QLoRA), the
tokenizer with its chat template, and trl's SFTTrainer over them."""

from __future__ import annotations

from typing import Any, NamedTuple

from recipe_runner import StageContext, StageError

from .params import SFTParams


class SFTSetup(NamedTuple):
    """A ready SFTTrainer and what went into it (tests inspect the prepared
    datasets without training)."""

    trainer: Any
    tokenizer: Any
    train_dataset: Any
    eval_dataset: Any
    info: dict[str, Any]


def build_sft_trainer(ctx: StageContext[SFTParams], base_path: str, callbacks: list[Any] | None = None) -> SFTSetup:
    """Model, tokenizer, datasets and SFTTrainer for the stage's params."""
    from trl import SFTConfig, SFTTrainer

    from ...common.devices import resolve_device, resolve_precision
    from ...common.models import load_tokenizer
    from ..trainer_args import training_arguments_kwargs
    from ..trainer_progress import quiet_trainer
    from .chat_templates import set_chat_template

    p = ctx.params
    device = resolve_device(p.device)
    if p.method == "qlora" and device != "cuda":
        raise StageError(
            "method qlora loads the base model in 4 bits with bitsandbytes, which needs a CUDA GPU; "
            "none is visible here. Use method: lora on a CPU (same adapter, unquantised base)."
        )
    precision = resolve_precision(p.precision, device)
    fmt, train_ds, eval_ds = sft_examples(ctx)
    tok = load_tokenizer(base_path)
    set_chat_template(tok, p.chat_template, fmt)
    model = load_model_for_sft(base_path, p, device, precision)
    max_length = _max_length_within_context(ctx, model)
    cfg = SFTConfig(
        **training_arguments_kwargs(p, ctx, has_eval=eval_ds is not None),
        max_length=max_length,
        packing=p.packing,
        packing_strategy=p.packing_strategy,
        completion_only_loss=p.completion_only_loss if fmt != "text" else None,
        dataset_text_field="text",
        remove_unused_columns=True,
    )
    peft_config = p.lora.to_peft() if p.method in ("lora", "qlora") else None
    trainer = SFTTrainer(
        model=model,
        args=cfg,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tok,
        peft_config=peft_config,
        callbacks=callbacks or [],
    )
    info = {
        "format": fmt,
        "train_examples": len(train_ds),
        "eval_examples": len(eval_ds) if eval_ds is not None else 0,
        "device": device,
        "precision": precision,
        "max_length": max_length,
    }
    return SFTSetup(quiet_trainer(trainer), tok, train_ds, eval_ds, info)


def sft_examples(ctx: StageContext[SFTParams]) -> tuple[str, Any, Any]:
    """(format, train examples, held-out examples or None) in trl's format:
    the test tail cut off, the held-out share split off, each converted."""
    from ..training_examples import load_examples, train_eval_split
    from .formats import detect_format, to_trl_dataset

    p = ctx.params
    dsd = load_examples(p.data_path, ctx.inputs)
    fmt = detect_format(dsd["train"].column_names, p)
    if p.test_tail:
        n = len(dsd["train"])
        if p.test_tail >= n:
            raise StageError(f"test_tail={p.test_tail} leaves nothing to train on ({n} records)")
        dsd["train"] = dsd["train"].select(range(n - p.test_tail))
    train_raw, eval_raw = train_eval_split(dsd, p.eval_fraction, ctx.seed, p.max_eval_samples)
    train_ds = to_trl_dataset(train_raw, fmt, p)
    eval_ds = to_trl_dataset(eval_raw, fmt, p) if eval_raw is not None else None
    return fmt, train_ds, eval_ds


def load_model_for_sft(path: str, p: SFTParams, device: str, precision: str) -> Any:
    """The model to fine-tune: 4-bit and prepared for k-bit training (QLoRA),
    bf16 (LoRA where the device computes in bf16) or float32."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..lora import bnb_config

    if p.method == "qlora":
        from peft import prepare_model_for_kbit_training

        qcfg = bnb_config(p.qlora, device)
        dtype = torch.bfloat16 if p.qlora.compute_dtype == "bf16" else None
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=qcfg, device_map={"": 0}, dtype=dtype)
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=p.gradient_checkpointing)
    dtype = torch.bfloat16 if (precision == "bf16" and p.method == "lora") else torch.float32
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def _max_length_within_context(ctx: StageContext[SFTParams], model: Any) -> int:
    """The recipe's max_length, capped (with a warning) at the model's context length."""
    from ...common.models import max_positions

    max_pos = max_positions(model)
    max_length = ctx.params.max_length
    if max_pos and max_length > max_pos:
        ctx.log.warning("max_length %d exceeds the model's context (%d); using %d", max_length, max_pos, max_pos)
        max_length = int(max_pos)
    return max_length
