"""The "Pretraining LLMs" course's model shapes: TinySolar-248m-4k's config
and the parameter counts of it, it downscaled to 10 layers and it up-scaled
to 16."""

from __future__ import annotations

from typing import Any

from ...common.models import count_parameters
from .layer_slicing import slice_layers
from .random_init import build_config, build_random_model

#: the course's model config (lesson "Preparing your model for training"):
#: TinySolar-248m-4k's shape; LlamaConfig defaults for the rest (vocab 32000,
#: 32 attention heads, tied embeddings off).
TINYSOLAR_CONFIG: dict[str, Any] = {
    "num_hidden_layers": 12,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
}

#: the course's three models: label -> layer slices of TinySolar (None: as it is)
COURSE_SLICES: dict[str, list[tuple[int, int]] | None] = {
    "base_12": None,
    "downscaled_10": [(0, 5), (7, 12)],
    "upscaled_16": [(0, 8), (4, 12)],
}


def course_param_counts() -> dict[str, int]:
    """Parameter counts of the course's three models, from configs on the
    meta device (no weights allocated)."""
    out = {}
    for label, slices in COURSE_SLICES.items():
        model = build_random_model(build_config("llama", TINYSOLAR_CONFIG), device="meta")
        if slices:
            slice_layers(model, slices)
        out[label] = count_parameters(model)
    return out
