"""sft: supervised fine-tuning with trl's SFTTrainer -- full fine-tuning,
LoRA or QLoRA -- on instruction (Alpaca), chat (messages), prompt/completion
or plain-text data, with the loss on the completion only, optional packing,
validation loss, sample generations and an optional merged model."""
from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from recipe_runner.artifacts import ADAPTER, DATASET, MODEL, Artifact
from recipe_runner.stage import Input, PlanView, Stage, StageContext, StageError

from ..common.devices import with_cpu_threads
from ..common.models import MODEL_INPUT, MODEL_PATH_DESC, model_input_slots
from ..common.prompts import alpaca_prompts_batch, chat_prompt
from ..common.training import TrainingParams
from .posttrain_common import (
    CHAT_TEMPLATES,
    DATA_PATH_DESC,
    LoraParams,
    QLoraParams,
    data_input_slots,
    data_path_fingerprint,
)

Format = Literal["auto", "alpaca", "chat", "prompt_completion", "text", "chosen"]


class SFTParams(TrainingParams):
    """Supervised fine-tuning settings (plus every TrainingParams field)."""

    model_name_or_path: str | None = Field(None, description=MODEL_PATH_DESC)
    data_path: str | None = Field(None, description=DATA_PATH_DESC)
    method: Literal["full", "lora", "qlora"] = Field(
        "lora", description="full: update every weight; lora: train a low-rank adapter on a frozen base; "
                            "qlora: LoRA on a 4-bit (nf4) base model -- needs a CUDA GPU and bitsandbytes")
    lora: LoraParams = Field(default_factory=LoraParams, description="adapter settings for method lora / qlora")
    qlora: QLoraParams = Field(default_factory=QLoraParams, description="4-bit quantisation settings for method qlora")
    merge: bool = Field(False, description="lora/qlora: also write a standalone model with the adapter merged into "
                                           "the base weights (merge_and_unload), output 'model'")
    format: Format = Field(
        "auto", description="data format: alpaca (instruction/input/output, standard Alpaca prompt), chat (a "
                            "messages column rendered with the chat template), prompt_completion, text (plain LM), "
                            "chosen (the preferred responses of preference pairs: prompt + chosen columns, or "
                            "hh-rlhf texts split at the last '\\n\\nAssistant:'); auto picks by the columns present")
    instruction_column: str = Field("instruction", description="alpaca format: instruction column")
    input_column: str = Field("input", description="alpaca format: optional input/context column")
    output_column: str = Field("output", description="alpaca format: response column")
    messages_column: str = Field("messages", description="chat format: column of [{role, content}, ...] lists")
    prompt_column: str = Field("prompt", description="prompt_completion format: prompt column")
    completion_column: str = Field("completion", description="prompt_completion format: completion column")
    text_column: str = Field("text", description="text format: column with the training text")
    chat_template: str | None = Field(
        None, description="chat format: a shipped template name (chatml, zephyr) or a .jinja file; None uses the "
                          "tokenizer's own template (an error when it has none)")
    completion_only_loss: bool = Field(
        True, description="compute the loss on the response only (prompt tokens masked with -100); for chat data "
                          "the last assistant turn is the completion")
    packing: bool = Field(False, description="pack several examples into each max_length row (trl packing)")
    packing_strategy: Literal["bfd", "wrapped"] = Field(
        "bfd", description="bfd: best-fit decreasing, examples kept whole (padding-free batches); wrapped: "
                           "concatenate and cut")
    max_length: int = Field(512, ge=8, description="token limit per training row (longer examples are truncated); "
                                                    "capped at the model's context length")
    learning_rate: float = Field(2e-4, gt=0, description="peak learning rate (2e-4 suits LoRA; use ~2e-5 for full fine-tuning)")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="held-out share of the train split for the validation "
                                                               "loss when the dataset has no 'validation' split")
    max_eval_samples: int | None = Field(200, ge=1, description="cap on validation examples")
    test_tail: int = Field(0, ge=0, description="leave the last N records of the train split out of training and "
                                                "validation: a test set for the eval stage's judge (the course's "
                                                "85/5/10 split keeps the last 10% for testing)")
    num_samples: int = Field(3, ge=0, description="validation prompts to generate sample responses for after training")
    sample_max_new_tokens: int = Field(64, ge=1, description="tokens per sample generation")


class SFTStage(Stage):
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
    def input_slots(cls, params: SFTParams):
        return data_input_slots(params, model_input_slots(params, dict(cls.inputs)))

    @classmethod
    def fingerprint_extra(cls, params):
        return data_path_fingerprint(params)

    @classmethod
    def output_slots(cls, params: SFTParams):
        if params.method == "full":
            return {"model": MODEL}
        return {"adapter": ADAPTER, "model": MODEL} if params.merge else {"adapter": ADAPTER}

    @classmethod
    def cross_check(cls, view: PlanView) -> list[str]:
        p: SFTParams = view.params  # type: ignore[assignment]
        errs = []
        if p.method == "qlora" and p.device == "cpu":
            errs.append(f"stage {view.name!r}: method qlora needs a CUDA GPU (bitsandbytes 4-bit), but device is 'cpu'")
        if p.chat_template and p.chat_template not in CHAT_TEMPLATES and not p.chat_template.endswith((".jinja", ".j2")):
            errs.append(f"stage {view.name!r}: chat_template {p.chat_template!r} is neither a shipped template "
                        f"({', '.join(CHAT_TEMPLATES)}) nor a .jinja file")
        return errs

    @with_cpu_threads
    def run(self, ctx: StageContext):
        return run_sft(ctx)


# ---------------------------------------------------------------- data


def detect_format(columns: list[str], p: SFTParams) -> str:
    if p.format != "auto":
        return p.format
    if p.instruction_column in columns and p.output_column in columns:
        return "alpaca"
    if "chosen" in columns and "rejected" in columns:
        return "chosen"
    if p.messages_column in columns:
        return "chat"
    if p.prompt_column in columns and p.completion_column in columns:
        return "prompt_completion"
    if p.text_column in columns:
        return "text"
    raise StageError(f"input 'dataset': cannot tell the data format from the columns {columns}; expected "
                     f"{p.instruction_column}/{p.output_column} (alpaca), {p.messages_column} (chat), "
                     f"{p.prompt_column}/{p.completion_column} or {p.text_column}; or set 'format'")


def _need(columns: list[str], needed: list[str], fmt: str) -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise StageError(f"input 'dataset': format {fmt!r} needs column(s) {missing}; the dataset has {columns}")


def _split_last_turn(batch: dict[str, list], col: str) -> dict[str, list]:
    prompts, completions = [], []
    for msgs in batch[col]:
        if not msgs or msgs[-1].get("role") != "assistant":
            raise StageError("input 'dataset': a chat example does not end with an assistant message, so it has no "
                             "completion to train on (set completion_only_loss: false to train on whole chats)")
        prompts.append(msgs[:-1])
        completions.append(msgs[-1:])
    return {"prompt": prompts, "completion": completions}


def to_trl_dataset(ds: Any, fmt: str, p: SFTParams) -> Any:
    """Convert one split into a dataset format trl's SFTTrainer reads:
    prompt/completion (alpaca, prompt_completion, chat with completion-only
    loss), messages (chat) or text."""
    cols = ds.column_names
    if fmt == "alpaca":
        _need(cols, [p.instruction_column, p.output_column], fmt)
        inp = p.input_column if p.input_column in cols else None

        def conv(batch):
            b = {"instruction": batch[p.instruction_column]}
            if inp:
                b["input"] = batch[inp]
            return {"prompt": alpaca_prompts_batch(b), "completion": [str(o) for o in batch[p.output_column]]}

        return ds.map(conv, batched=True, remove_columns=cols, desc="alpaca -> prompt/completion")
    if fmt == "chosen":
        _need(cols, ["chosen"], fmt)
        if p.prompt_column in cols:
            ds = ds.select_columns([p.prompt_column, "chosen"]).rename_columns(
                {p.prompt_column: "prompt", "chosen": "completion"} if p.prompt_column != "prompt"
                else {"chosen": "completion"})
            return ds

        def conv_hh(batch):
            from .posttrain_common import split_hh

            prompts, completions = [], []
            for text in batch["chosen"]:
                sp = split_hh(text)
                if sp is not None and sp[1].strip():
                    prompts.append(sp[0])
                    completions.append(sp[1])
            return {"prompt": prompts, "completion": completions}

        out = ds.map(conv_hh, batched=True, remove_columns=cols, desc="hh-rlhf chosen -> prompt/completion")
        if len(out) == 0:
            raise StageError("format 'chosen': no 'chosen' text has a '\\n\\nAssistant:' turn to split at, and "
                             f"there is no {p.prompt_column!r} column")
        return out
    if fmt == "prompt_completion":
        _need(cols, [p.prompt_column, p.completion_column], fmt)
        ds = ds.select_columns([p.prompt_column, p.completion_column])
        ren = {p.prompt_column: "prompt", p.completion_column: "completion"}
        return ds.rename_columns({k: v for k, v in ren.items() if k != v})
    if fmt == "chat":
        _need(cols, [p.messages_column], fmt)
        ds = ds.select_columns([p.messages_column])
        if p.completion_only_loss:
            return ds.map(_split_last_turn, batched=True, fn_kwargs={"col": p.messages_column},
                          remove_columns=[p.messages_column], desc="chat -> prompt/last assistant turn")
        return ds.rename_column(p.messages_column, "messages") if p.messages_column != "messages" else ds
    _need(cols, [p.text_column], fmt)
    ds = ds.select_columns([p.text_column])
    return ds.rename_column(p.text_column, "text") if p.text_column != "text" else ds


def _set_chat_template(tok: Any, p: SFTParams, fmt: str) -> None:
    if p.chat_template:
        if p.chat_template in CHAT_TEMPLATES:
            tok.chat_template = CHAT_TEMPLATES[p.chat_template]
        else:
            from pathlib import Path

            path = Path(p.chat_template)
            if not path.is_file():
                raise StageError(f"chat_template: {p.chat_template!r} is not a shipped template "
                                 f"({', '.join(CHAT_TEMPLATES)}) nor an existing .jinja file")
            tok.chat_template = path.read_text(encoding="utf-8")
    elif fmt == "chat" and not getattr(tok, "chat_template", None):
        raise StageError("format 'chat': the tokenizer has no chat template; set chat_template to one of "
                         f"{', '.join(CHAT_TEMPLATES)} or a .jinja file")


# ---------------------------------------------------------------- model


def load_model_for_sft(path: str, p: SFTParams, device: str, precision: str):
    import torch
    from transformers import AutoModelForCausalLM

    from .posttrain_common import bnb_config

    if p.method == "qlora":
        qcfg = bnb_config(p.qlora, device)
        from peft import prepare_model_for_kbit_training

        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=qcfg, device_map={"": 0},
                                                     dtype=torch.bfloat16 if p.qlora.compute_dtype == "bf16" else None)
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=p.gradient_checkpointing)
    dtype = torch.bfloat16 if (precision == "bf16" and p.method == "lora") else torch.float32
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def build_sft_trainer(ctx: StageContext, base_path: str, callbacks: list | None = None):
    """Model, tokenizer, datasets and SFTTrainer for the stage's params
    (tests inspect the prepared datasets without training)."""
    from trl import SFTConfig, SFTTrainer

    from ..common.devices import resolve_device, resolve_precision
    from ..common.models import load_tokenizer, max_positions
    from ..common.training import training_arguments_kwargs
    from .posttrain_common import load_stage_dataset, train_eval_split

    p: SFTParams = ctx.params  # type: ignore[assignment]
    device = resolve_device(p.device)
    if p.method == "qlora" and device != "cuda":
        raise StageError("method qlora loads the base model in 4 bits with bitsandbytes, which needs a CUDA GPU; "
                         "none is visible here. Use method: lora on a CPU (same adapter, unquantised base).")
    precision = resolve_precision(p.precision, device)

    dsd = load_stage_dataset(ctx)
    fmt = detect_format(dsd["train"].column_names, p)
    if p.test_tail:
        n = len(dsd["train"])
        if p.test_tail >= n:
            raise StageError(f"test_tail={p.test_tail} leaves nothing to train on ({n} records)")
        dsd["train"] = dsd["train"].select(range(n - p.test_tail))
    train_raw, eval_raw = train_eval_split(dsd, p.eval_fraction, ctx.seed, p.max_eval_samples)
    train_ds = to_trl_dataset(train_raw, fmt, p)
    eval_ds = to_trl_dataset(eval_raw, fmt, p) if eval_raw is not None else None

    tok = load_tokenizer(base_path)
    _set_chat_template(tok, p, fmt)
    model = load_model_for_sft(base_path, p, device, precision)
    max_pos = max_positions(model)
    max_length = p.max_length
    if max_pos and max_length > max_pos:
        ctx.log.warning("max_length %d exceeds the model's context (%d); using %d", max_length, max_pos, max_pos)
        max_length = int(max_pos)

    kw = training_arguments_kwargs(p, ctx, has_eval=eval_ds is not None)
    cfg = SFTConfig(
        **kw,
        max_length=max_length,
        packing=p.packing,
        packing_strategy=p.packing_strategy,
        completion_only_loss=p.completion_only_loss if fmt != "text" else None,
        dataset_text_field="text",
        remove_unused_columns=True,
    )
    peft_config = p.lora.to_peft() if p.method in ("lora", "qlora") else None
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tok, peft_config=peft_config, callbacks=callbacks or [])
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # progress_callback logs the same lines
    info = {"format": fmt, "train_examples": len(train_ds), "eval_examples": len(eval_ds) if eval_ds is not None else 0,
            "device": device, "precision": precision, "max_length": max_length}
    return trainer, tok, train_ds, eval_ds, eval_raw, info


# ---------------------------------------------------------------- samples


def _sample_prompts(ds: Any, tok: Any, n: int) -> list[dict[str, Any]]:
    rows = ds.select(range(min(n, len(ds))))
    out = []
    for r in rows:
        if "prompt" in r:
            prompt = r["prompt"]
            ref = r.get("completion")
            if isinstance(prompt, list):
                prompt = chat_prompt(tok, prompt)
                ref = ref[-1]["content"] if ref else None
        elif "messages" in r:
            msgs = r["messages"]
            prompt = chat_prompt(tok, msgs[:-1] if len(msgs) > 1 else msgs)
            ref = msgs[-1]["content"] if len(msgs) > 1 else None
        else:
            text = r["text"]
            prompt, ref = text[: max(1, len(text) // 2)][:300], text[len(text) // 2:][:300]
        out.append({"prompt": prompt, "reference": ref})
    return out


def write_samples(ctx: StageContext, model: Any, tok: Any, ds: Any, out_dir, p: SFTParams) -> None:
    if p.num_samples <= 0 or ds is None or len(ds) == 0:
        return
    from ..common.generation import GenerationSettings, generate_texts

    items = _sample_prompts(ds, tok, p.num_samples)
    was_training = model.training
    model.eval()
    texts = generate_texts(model, tok, [it["prompt"] for it in items],
                           GenerationSettings(max_new_tokens=p.sample_max_new_tokens), batch_size=4)
    if was_training:
        model.train()
    for it, t in zip(items, texts):
        it["response"] = t.strip()
    with (out_dir / "samples.jsonl").open("w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    ctx.metrics["samples"] = [{k: (v[-300:] if k == "prompt" and isinstance(v, str) else (v or "")[:300])
                               for k, v in it.items()} for it in items]
    for it in items:
        ctx.log.info("sample: %r -> %r", it["prompt"][-120:], it["response"][:200])


# ---------------------------------------------------------------- run


def run_sft(ctx: StageContext) -> dict[str, Artifact]:
    import torch

    from ..common.models import resolve_model_path, save_model_artifact
    from ..common.training import last_checkpoint, progress_callback, save_loss_curve
    from .posttrain_common import history_summary

    p: SFTParams = ctx.params  # type: ignore[assignment]
    base_path = resolve_model_path(ctx)
    torch.manual_seed(ctx.seed)
    cb = progress_callback(ctx, f"sft ({p.method})")
    trainer, tok, train_ds, eval_ds, eval_raw, info = build_sft_trainer(ctx, base_path, callbacks=[cb])
    ctx.metrics.update(info)
    ctx.metrics["method"] = p.method
    if p.method != "full":
        n_train = sum(x.numel() for x in trainer.model.parameters() if x.requires_grad)
        n_all = sum(x.numel() for x in trainer.model.parameters())
        ctx.metrics.update(trainable_parameters=int(n_train), total_parameters=int(n_all),
                           trainable_fraction=n_train / max(1, n_all))
        ctx.log.info("LoRA: %d trainable of %d parameters (%.2f%%)", n_train, n_all, 100 * n_train / max(1, n_all))

    resume = last_checkpoint(ctx)
    if eval_ds is not None and resume is None:
        ctx.metrics["eval_loss_before"] = float(trainer.evaluate()["eval_loss"])
    result = trainer.train(resume_from_checkpoint=resume)
    ctx.metrics["train_loss"] = float(result.training_loss)
    ctx.metrics["train_steps"] = int(result.global_step)
    ctx.metrics.update(history_summary(cb.history, ["loss"]))
    if eval_ds is not None:
        ctx.metrics["eval_loss"] = float(trainer.evaluate()["eval_loss"])
        ctx.log.info("validation loss %s -> %.4f", ctx.metrics.get("eval_loss_before"), ctx.metrics["eval_loss"])

    outputs: dict[str, Artifact] = {}
    model = trainer.model
    if p.method == "full":
        main_dir = ctx.output_path("model")
        write_samples(ctx, model, tok, eval_ds if eval_ds is not None else train_ds, main_dir, p)
        outputs["model"] = save_model_artifact(model, tok, main_dir, base_model=base_path, method="full")
    else:
        main_dir = ctx.output_path("adapter")
        write_samples(ctx, model, tok, eval_ds if eval_ds is not None else train_ds, main_dir, p)
        model.save_pretrained(str(main_dir))
        tok.save_pretrained(str(main_dir))
        outputs["adapter"] = Artifact(kind=ADAPTER, path=main_dir, meta={
            "base_model": base_path, "method": p.method, "r": p.lora.r, "alpha": p.lora.alpha,
            "trainable_parameters": ctx.metrics.get("trainable_parameters")})
        if p.merge:
            merged = merge_adapter(base_path, main_dir, p, model)
            outputs["model"] = save_model_artifact(merged, tok, ctx.output_path("model"), base_model=base_path,
                                                   method=f"{p.method}+merge")
    save_loss_curve(cb.history, main_dir / "loss.png", title=f"sft ({p.method})")
    del trainer
    return outputs


def merge_adapter(base_path: str, adapter_dir, p: SFTParams, trained: Any):
    """A standalone model with the adapter folded into the base weights.  LoRA:
    merge in place; QLoRA: reload the base unquantised (compute dtype) and
    merge the saved adapter there (4-bit weights cannot absorb the update)."""
    import torch

    if p.method == "lora":
        merged = trained.merge_and_unload()
        return merged.to(torch.float32) if merged.dtype != torch.float32 and str(merged.device) == "cpu" else merged
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ..common.devices import torch_dtype

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch_dtype(p.qlora.compute_dtype))
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
