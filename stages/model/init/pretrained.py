"""A pretrained base model as the start: loaded, layer-sliced when asked
(downscaling / depth up-scaling), fitted to the tokenizer it will carry."""

from __future__ import annotations

import logging
from typing import Any

from recipe_runner import StageError

from ...common.models import count_parameters
from .layer_slicing import slice_layers, slicing_mode
from .params import InitParams
from .tokenizer_wiring import copy_special_token_ids, fit_embeddings


def load_base_model(ref: str, p: InitParams, dtype: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained`` of the base; a failure is a
    StageError naming it (with a hint when it needs ``trust_remote_code``)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            ref, dtype=dtype, revision=p.revision, trust_remote_code=p.trust_remote_code
        )
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = ""
        if "trust_remote_code" in str(e):
            hint = " (this model needs `trust_remote_code: true` in the recipe)"
        raise StageError(f"init: cannot load model {ref!r}: {msg}{hint}") from None


def start_from_base(
    base_ref: str, p: InitParams, dtype: Any, tokenizer: Any | None, log: logging.Logger, metrics: dict[str, Any]
) -> tuple[Any, str, list[int]]:
    """(model, mode, layer map): the base loaded, sliced by ``p.layer_slices``
    (mode 'upscale' / 'downscale' / 'reslice') or kept whole ('pretrained'),
    its embeddings and special-token ids fitted to ``tokenizer``.  The base's
    size goes into ``metrics``."""
    log.info("loading base model %s", base_ref)
    model = load_base_model(base_ref, p, dtype)
    base_layers = model.config.num_hidden_layers
    metrics["base_num_parameters"] = count_parameters(model)
    metrics["base_num_layers"] = base_layers
    if p.layer_slices:
        lmap = slice_layers(model, p.layer_slices)
        mode = slicing_mode(base_layers, len(lmap))
        log.info("%s: %d -> %d layers from slices %s", mode, base_layers, len(lmap), [list(s) for s in p.layer_slices])
    else:
        lmap, mode = list(range(base_layers)), "pretrained"
    fit_embeddings(model, p, tokenizer, log)
    if tokenizer is not None:
        copy_special_token_ids(model, tokenizer)
    return model, mode, lmap
