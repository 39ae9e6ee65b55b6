"""The sft stage's parameters: the starting model and examples, the method
(full, LoRA, QLoRA), the data format and its columns, the chat template and
the sample generations (plus every TrainingParams field)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..fine_tuning import FineTuningParams
from ..lora import LoraParams, QLoraParams
from ..trainer_args import TrainingParams

Format = Literal["auto", "alpaca", "chat", "prompt_completion", "text", "chosen"]
Method = Literal["full", "lora", "qlora"]


def _default_lora() -> LoraParams:
    return LoraParams.model_validate({})


def _default_qlora() -> QLoraParams:
    return QLoraParams.model_validate({})


class SFTParams(FineTuningParams, TrainingParams):
    """Supervised fine-tuning settings (plus every TrainingParams field)."""

    method: Method = Field(
        "lora",
        description="full: update every weight; lora: train a low-rank adapter on a frozen base; "
        "qlora: LoRA on a 4-bit (nf4) base model -- needs a CUDA GPU and bitsandbytes",
    )
    lora: LoraParams = Field(default_factory=_default_lora, description="adapter settings for method lora / qlora")
    qlora: QLoraParams = Field(
        default_factory=_default_qlora, description="4-bit quantisation settings for method qlora"
    )
    merge: bool = Field(
        False,
        description="lora/qlora: also write a standalone model with the adapter merged into "
        "the base weights (merge_and_unload), output 'model'",
    )
    format: Format = Field(
        "auto",
        description="data format: alpaca (instruction/input/output, standard Alpaca prompt), chat (a "
        "messages column rendered with the chat template), prompt_completion, text (plain LM), "
        "chosen (the preferred responses of preference pairs: prompt + chosen columns, or "
        "hh-rlhf texts split at the last '\\n\\nAssistant:'); auto picks by the columns present",
    )
    instruction_column: str = Field("instruction", description="alpaca format: instruction column")
    input_column: str = Field("input", description="alpaca format: optional input/context column")
    output_column: str = Field("output", description="alpaca format: response column")
    messages_column: str = Field("messages", description="chat format: column of [{role, content}, ...] lists")
    prompt_column: str = Field("prompt", description="prompt_completion format: prompt column")
    completion_column: str = Field("completion", description="prompt_completion format: completion column")
    text_column: str = Field("text", description="text format: column with the training text")
    chat_template: str | None = Field(
        None,
        description="chat format: a shipped template name (chatml, zephyr) or a .jinja file; None uses the "
        "tokenizer's own template (an error when it has none)",
    )
    completion_only_loss: bool = Field(
        True,
        description="compute the loss on the response only (prompt tokens masked with -100); for chat data "
        "the last assistant turn is the completion",
    )
    packing: bool = Field(False, description="pack several examples into each max_length row (trl packing)")
    packing_strategy: Literal["bfd", "wrapped"] = Field(
        "bfd",
        description="bfd: best-fit decreasing, examples kept whole (padding-free batches); wrapped: "
        "concatenate and cut",
    )
    max_length: int = Field(
        512,
        ge=8,
        description="token limit per training row (longer examples are truncated); "
        "capped at the model's context length",
    )
    learning_rate: float = Field(
        2e-4, gt=0, description="peak learning rate (2e-4 suits LoRA; use ~2e-5 for full fine-tuning)"
    )
    eval_fraction: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="held-out share of the train split for the validation loss when the dataset has no "
        "'validation' split",
    )
    max_eval_samples: int | None = Field(200, ge=1, description="cap on validation examples")
    test_tail: int = Field(
        0,
        ge=0,
        description="leave the last N records of the train split out of training and validation: a test set for "
        "the eval stage's judge (the course's 85/5/10 split keeps the last 10% for testing)",
    )
    num_samples: int = Field(3, ge=0, description="validation prompts to generate sample responses for after training")
    sample_max_new_tokens: int = Field(64, ge=1, description="tokens per sample generation")
