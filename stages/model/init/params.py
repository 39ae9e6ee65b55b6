"""The ``init`` stage's parameters."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from recipe_runner import Params

#: the config fields of a random init that count something: each a whole number, at least 1
SIZE_KEYS = (
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "vocab_size",
)


class InitParams(Params):
    from_pretrained: str | None = Field(
        None,
        description="Hugging Face hub id or local directory of a base model (continued pretraining, "
        "downscaling, up-scaling). When unset and the `model` input is connected, that model is the base; "
        "when neither, the model is randomly initialised from `model_type` + `config`.",
    )
    revision: str | None = Field(None, description="hub revision (branch, tag or commit) of `from_pretrained`")
    trust_remote_code: bool = Field(
        False, description="allow model code from the hub repository to run (off unless the recipe turns it on)"
    )
    model_type: str = Field(
        "llama",
        description="architecture of a randomly initialised model: any Hugging Face causal-LM model_type "
        "(llama, mistral, qwen2, gpt2, ...), built with AutoConfig.for_model",
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="config fields for random init, e.g. {num_hidden_layers: 12, hidden_size: 1024, "
        "intermediate_size: 4096, num_attention_heads: 32, num_key_value_heads: 8} (the course's TinySolar "
        "shape); unset fields keep the architecture's defaults. Only for random init.",
    )
    vocab_size: int | Literal["auto"] = Field(
        "auto",
        description="'auto': the tokenizer's length (random init) or the base model's own vocabulary, grown "
        "to the tokenizer's length if that is larger; an integer (at least 1) sets it (a base model's embeddings "
        "are resized)",
    )
    tokenizer: str | None = Field(
        None,
        description="tokenizer directory or hub id. Precedence: this, else the base model's own tokenizer, else "
        "the `tokenizer` input. It is saved into the model directory, its bos/eos/pad ids go into the config",
    )
    layer_slices: list[tuple[int, int]] | None = Field(
        None,
        description="new decoder stack as half-open [start, end) slices of the base model's layers, in order: "
        "[[0,8],[4,12]] up-scales 12 -> 16 layers (SOLAR depth up-scaling), [[0,5],[7,12]] downscales "
        "12 -> 10. Needs a base model",
    )
    init_std: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="std of the truncated-normal random init (truncated at +-2 std); default: the config's "
        "initializer_range (0.02 for Llama)",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="dtype of the saved weights. float32 trains with mixed precision (bf16 autocast on a GPU "
        "that has it); the course stores bfloat16",
    )

    @field_validator("vocab_size")
    @classmethod
    def _check_vocab_size(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"vocab_size must be 'auto' or at least 1, not {v}")
        return v

    @field_validator("config")
    @classmethod
    def _check_config_sizes(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in SIZE_KEYS:
            size = v.get(key)
            if key in v and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
                raise ValueError(f"config.{key} must be a whole number of at least 1, not {size!r}")
        return v

    @field_validator("layer_slices")
    @classmethod
    def _check_slices(cls, v: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("layer_slices must list at least one [start, end) slice")
        for start, end in v:
            if start < 0 or end <= start:
                raise ValueError(f"layer slice [{start}, {end}) is empty or negative: need 0 <= start < end")
        return v
