"""The pretrain stage's parameters: the held-out share, layer freezing and the
dtype of the saved weights (plus every TrainingParams field)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..trainer_args import TrainingParams


class PretrainParams(TrainingParams):
    validation_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="fraction of the training rows held out for validation when the packed dataset has no "
        "'validation' split (0 = none)",
    )
    max_eval_samples: int | None = Field(
        None, ge=1, description="cap on validation rows (validation is a full forward pass over them)"
    )
    train_top_layers: int | None = Field(
        None,
        ge=0,
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
