"""``init`` (alias ``scale``): the four ways to start a pretraining run, as in
the "Pretraining LLMs" course (DeepLearning.AI / Upstage):

1. **random init** from a config (``LlamaConfig`` by default, any Hugging Face
   causal-LM architecture by ``model_type``), weights drawn from a truncated
   normal (mean 0, std 0.02, cut at +-2 std) -- ``random_init.py``;
2. **a pretrained model** (hub id, local dir or the upstream ``model``
   artifact) as the start of continued pretraining -- ``pretrained.py``;
3. **downscaling**: drop middle decoder layers (``layer_slices: [[0,5],[7,12]]``
   keeps the first and last five of twelve, as the course does);
4. **depth up-scaling** as in SOLAR: the decoder stack becomes a concatenation
   of slices of the base's layers (``[[0,8],[4,12]]`` turns TinySolar's 12
   layers into 16; SOLAR 10.7B is ``[[0,24],[8,32]]`` of a 32-layer model)
   -- ``layer_slicing.py``.

The output is a self-contained model directory (safetensors + tokenizer, see
``tokenizer_wiring.py``) with ``layer_map.json``.  Heavy libraries are
imported inside functions: importing this module stays cheap (``recipe
validate``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recipe_runner import Artifact, Facts, Input, PlanView, Stage, StageContext, StageError
from recipe_runner.artifacts import MAX_POSITIONS, MODEL, MODEL_SHAPE, TOKENIZER

from ...common.models import count_parameters, local_path, save_model_dir
from ...common.tokenizer_digest import TOKENIZER_DIGEST, tokenizer_digest
from .params import InitParams
from .pretrained import start_from_base
from .random_init import random_init_config, random_model
from .shape_fact import init_shape
from .sources import local_config_value, resolve_source
from .tokenizer_wiring import choose_tokenizer

_BOTH_BASES = "both from_pretrained and a `model` input are given; use one"
_SLICES_NEED_BASE = "layer_slices needs a base model (from_pretrained or a `model` input)"
_CONFIG_FOR_RANDOM = "`config` applies to random init only; this stage starts from a base model"


class InitStage(Stage[InitParams]):
    name = "init"
    aliases = ("scale",)
    version = "2"  # 2: the digest of the tokenizer saved with the model in the output's meta
    description = (
        "Start a model: random init from a config, a pretrained model for continued pretraining, "
        "or a layer-sliced (downscaled / depth up-scaled) copy of a base model."
    )
    Params = InitParams
    inputs = {
        # a base model binds only when the recipe names it: an init stage late in a recipe must not silently
        # turn a random init into continued pretraining of whatever model came before
        "model": Input(
            MODEL,
            optional=True,
            auto=False,
            description="base model for continued pretraining / scaling (name it under `inputs:`)",
        ),
        "tokenizer": Input(
            TOKENIZER,
            optional=True,
            description="tokenizer (its vocabulary sizes a random model); a base model keeps its own",
        ),
    }
    outputs = {"model": MODEL}

    @classmethod
    def local_inputs(cls, params: InitParams) -> Mapping[str, Path]:
        """A local base model directory and a local tokenizer directory (hub ids are not local)."""
        named = {"from_pretrained": params.from_pretrained, "tokenizer": params.tokenizer}
        return {field: path for field, ref in named.items() if (path := local_path(ref)) is not None}

    @classmethod
    def runs_code(cls, params: InitParams) -> Mapping[str, str]:
        """``trust_remote_code: true`` (set here, in ``defaults:`` or in an
        ``extends:`` base) runs the Python a model or tokenizer folder ships."""
        if not params.trust_remote_code:
            return {}
        named = params.from_pretrained or params.tokenizer or "the base model"
        return {"trust_remote_code": f"loads and runs the Python code shipped with {named} (trust_remote_code)"}

    @classmethod
    def output_facts(cls, params: InitParams, inputs: Mapping[str, Facts]) -> Mapping[str, Facts]:
        """The model's max positions, where the plan can know them: the random-init
        config, a local ``from_pretrained`` directory, or the input model's facts
        (layer slicing keeps positions)."""
        max_pos = params.config.get("max_position_embeddings")
        if params.from_pretrained is not None:
            max_pos = local_config_value(params.from_pretrained, "max_position_embeddings")
        elif "model" in inputs:
            max_pos = inputs["model"].get(MAX_POSITIONS)
        facts: dict[str, Any] = {MAX_POSITIONS: max_pos} if isinstance(max_pos, int) else {}
        shape = init_shape(params, inputs)  # sizes for the training stages' memory / time estimates
        return {"model": {**facts, MODEL_SHAPE: shape} if shape is not None else facts}

    @classmethod
    def cross_check(cls, view: PlanView[InitParams]) -> list[str]:
        p = view.params
        has_base = p.from_pretrained is not None or "model" in view.upstream
        errors = []
        if p.layer_slices and not has_base:
            errors.append(f"{view.name}: {_SLICES_NEED_BASE}")
        if has_base and p.config:
            errors.append(f"{view.name}: {_CONFIG_FOR_RANDOM}")
        if p.from_pretrained is not None and "model" in view.upstream:
            errors.append(f"{view.name}: {_BOTH_BASES}")
        return errors

    def run(self, ctx: StageContext[InitParams]) -> dict[str, Artifact]:
        import torch

        p = ctx.params
        dtype = getattr(torch, p.dtype)
        base_ref = _base_reference(ctx)
        tokenizer = choose_tokenizer(p, base_ref, ctx.inputs.get("tokenizer"))
        torch.manual_seed(ctx.seed)
        if base_ref is None:
            model, mode, lmap = _start_random(ctx, tokenizer)
        else:
            if p.config:
                raise StageError(f"init: {_CONFIG_FOR_RANDOM}")
            model, mode, lmap = start_from_base(base_ref, p, dtype, tokenizer, ctx.log, ctx.metrics)
        return {"model": _save_model(ctx, model.to(dtype), tokenizer, mode, lmap, base_ref)}


def _base_reference(ctx: StageContext[InitParams]) -> str | None:
    """The base model: ``from_pretrained`` (resolved), else the ``model``
    input's directory, else None (random init)."""
    p = ctx.params
    base_art = ctx.inputs.get("model")
    if p.from_pretrained and base_art is not None:
        raise StageError(f"init: {_BOTH_BASES}")
    if p.from_pretrained:
        return resolve_source(p.from_pretrained, "model")
    return str(base_art.path) if base_art is not None else None


def _start_random(ctx: StageContext[InitParams], tokenizer: Any | None) -> tuple[Any, str, list[int]]:
    """(model, 'random', layer map) of a randomly initialised model."""
    p = ctx.params
    if p.layer_slices:
        raise StageError(f"init: {_SLICES_NEED_BASE}")
    config = random_init_config(p, tokenizer)
    model, std, counts = random_model(config, p.init_std)
    ctx.log.info(
        "random init of a %s model (%d layers): truncated normal std %.3g on %d linear and %d embedding weights",
        config.model_type,
        config.num_hidden_layers,
        std,
        counts["linear"],
        counts["embedding"],
    )
    ctx.metrics["init_std"] = std
    return model, "random", list(range(config.num_hidden_layers))


def _save_model(
    ctx: StageContext[InitParams], model: Any, tokenizer: Any | None, mode: str, lmap: list[int], base_ref: str | None
) -> Artifact:
    """The model directory (weights, tokenizer, ``layer_map.json``), its
    metrics, and the ``model`` artifact."""
    if tokenizer is None:
        ctx.log.warning("no tokenizer: the model directory will hold no tokenizer files")
    out = ctx.output_path("model")
    save_model_dir(model, tokenizer, out)
    n_params = count_parameters(model)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    (out / "layer_map.json").write_text(json.dumps({"mode": mode, "layer_map": lmap, "base": base_ref}, indent=1))
    ctx.metrics.update(
        {"mode": mode, "num_parameters": n_params, "num_layers": len(lmap), "vocab_size": vocab, "layer_map": lmap}
    )
    ctx.log.info("%s model: %s parameters, %d layers, vocab %d", mode, f"{n_params:,}", len(lmap), vocab)
    meta = {"num_parameters": n_params, "num_layers": len(lmap), "vocab_size": vocab, "layer_map": lmap, "mode": mode}
    if tokenizer is not None:
        meta[TOKENIZER_DIGEST] = tokenizer_digest(tokenizer)
    return Artifact(MODEL, out, meta=meta)
