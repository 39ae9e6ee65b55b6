"""The ``model_shape`` fact of the init stage's output, known at plan time
without torch: the random init's config (over Llama's defaults for
``model_type: llama``), a local ``from_pretrained`` directory's config.json,
or the input model's shape, each after layer slicing and a set vocabulary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from recipe_runner import Facts
from recipe_runner.artifacts import MODEL_SHAPE, VOCAB_SIZE, VOCAB_SIZE_AT_MOST

from ...common.model_shape import local_model_shape, shape_from_config, sliced
from .params import InitParams


def init_shape(params: InitParams, inputs: Mapping[str, Facts]) -> dict[str, Any] | None:
    """The shape of the model this init stage writes, or None where the plan
    cannot know it (a hub id, an input model without a shape)."""
    shape: dict[str, Any] | None
    if params.from_pretrained is not None:
        shape = local_model_shape(params.from_pretrained)
    elif "model" in inputs:
        known = inputs["model"].get(MODEL_SHAPE)
        shape = dict(known) if isinstance(known, Mapping) else None
    else:
        shape = shape_from_config(params.config, params.model_type)
        if shape is not None and "vocab_size" not in params.config:
            shape["vocab_size"] = None if params.tokenizer else _tokenizer_vocab(inputs.get("tokenizer", {}), shape)
    if shape is None:
        return None
    if params.layer_slices:
        shape = sliced(shape, params.layer_slices)
    if isinstance(params.vocab_size, int):
        shape["vocab_size"] = params.vocab_size
    return shape


def _tokenizer_vocab(facts: Facts, shape: dict[str, Any]) -> int | None:
    """The vocabulary of the input tokenizer: exact, or the size a tokenizer
    trained in the run asks for (then marked ``vocab_size_at_most``)."""
    exact, at_most = facts.get(VOCAB_SIZE), facts.get(VOCAB_SIZE_AT_MOST)
    if isinstance(exact, int):
        return exact
    if isinstance(at_most, int):
        shape["vocab_size_at_most"] = True
        return at_most
    return None
