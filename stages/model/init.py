"""``init`` (alias ``scale``): the four ways to start a pretraining run, as in
the "Pretraining LLMs" course (DeepLearning.AI / Upstage):

1. **random init** from a config (``LlamaConfig`` by default, any Hugging Face
   causal-LM architecture by ``model_type``), weights drawn from a truncated
   normal (mean 0, std 0.02, cut at +-2 std);
2. **a pretrained model** (hub id, local dir or the upstream ``model``
   artifact) as the start of continued pretraining;
3. **downscaling**: drop middle decoder layers (``layer_slices: [[0,5],[7,12]]``
   keeps the first and last five of twelve, as the course does);
4. **depth up-scaling** as in SOLAR: the decoder stack becomes a concatenation
   of slices of the base's layers (``[[0,8],[4,12]]`` turns TinySolar's 12
   layers into 16; SOLAR 10.7B is ``[[0,24],[8,32]]`` of a 32-layer model).

Embeddings, the final norm and the LM head are copied from the base; the
config's ``num_hidden_layers`` (and any per-layer list such as
``layer_types``) is updated and each attention module's ``layer_idx`` is
renumbered so the KV cache addresses the right slot.  The output is a
self-contained model directory (safetensors + tokenizer).

Heavy libraries are imported inside functions: importing this module stays
cheap (``recipe validate``).
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from recipe_runner import MAX_POSITIONS, Facts
from recipe_runner.artifacts import MODEL, TOKENIZER, Artifact
from recipe_runner.stage import Input, Params, PlanView, Stage, StageContext, StageError

from ..common.models import count_parameters, decoder_layers, load_tokenizer, save_model_dir

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
        "to the tokenizer's length if that is larger; an integer sets it (a base model's embeddings are resized)",
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
        None, gt=0,
        description="std of the truncated-normal random init (truncated at +-2 std); default: the config's "
        "initializer_range (0.02 for Llama)",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="dtype of the saved weights. float32 trains with mixed precision (bf16 autocast on a GPU "
        "that has it); the course stores bfloat16",
    )

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


# --------------------------------------------------------------------------- helpers (real code path, testable)


def build_config(model_type: str = "llama", overrides: dict[str, Any] | None = None):
    """A fresh config of ``model_type`` with ``overrides`` applied through the
    constructor (so derived fields such as Llama's ``head_dim`` follow the
    overridden ``hidden_size``; setting attributes afterwards would not)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.for_model(model_type, **(overrides or {}))
    except ValueError as e:
        raise StageError(f"init: unknown model_type {model_type!r} ({e})") from None
    except TypeError as e:
        raise StageError(f"init: bad config for model_type {model_type!r}: {e}") from None


def build_random_model(config, device: str | None = None):
    """An untrained causal LM for ``config`` (``device='meta'`` allocates no
    memory, for parameter counts)."""
    import torch
    from transformers import AutoModelForCausalLM

    if device == "meta":
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    return AutoModelForCausalLM.from_config(config)


def truncated_normal_init_(model, std: float = 0.02) -> dict[str, int]:
    """The course's random initialisation: every Linear and Embedding weight
    drawn from a normal with mean 0 and ``std``, truncated to [-2 std, 2 std]
    (``torch.nn.init.trunc_normal_`` redraws out-of-range values, so the
    distribution is a proper truncated normal, not a clipped one); biases 0;
    an embedding's padding row 0. Norm weights keep the architecture's own
    initialisation (ones for LayerNorm/RMSNorm; Gemma-style ``1 + w`` norms
    keep their zeros). Returns counts of what was initialised."""
    import torch
    from torch import nn

    counts = {"linear": 0, "embedding": 0, "norm": 0}
    done: set[int] = set()  # a tied LM head shares the embedding matrix: initialise it once
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and id(weight) in done:
                continue
            if isinstance(weight, torch.Tensor):
                done.add(id(weight))
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
                if module.bias is not None:
                    module.bias.zero_()
                counts["linear"] += 1
            elif isinstance(module, nn.Embedding):
                nn.init.trunc_normal_(module.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
                counts["embedding"] += 1
            elif "norm" in type(module).__name__.lower():
                counts["norm"] += 1  # the architecture's own init (see docstring)
    return counts


def layer_map(num_layers: int, slices: list[tuple[int, int]] | None) -> list[int]:
    """Source layer index of each new layer."""
    if not slices:
        return list(range(num_layers))
    out: list[int] = []
    for start, end in slices:
        if end > num_layers:
            raise StageError(f"init: layer slice [{start}, {end}) reaches past the base model's "
                             f"{num_layers} layers")
        out.extend(range(start, end))
    return out


def slice_layers(model, slices: list[tuple[int, int]]) -> list[int]:
    """Rebuild ``model``'s decoder stack from ``slices`` of its own layers, in
    place: depth up-scaling (overlapping slices, each copied layer a deep copy)
    or downscaling (a subset).  Embeddings, final norm and head are untouched,
    i.e. carried over.  The config's ``num_hidden_layers`` and per-layer lists
    (``layer_types``, ...) follow, and every module's ``layer_idx`` is
    renumbered so the KV cache stays consistent.  Works on the meta device.
    Returns the layer map (source index of each new layer)."""
    import copy

    from torch import nn

    config = model.config
    old_n = config.num_hidden_layers
    lmap = layer_map(old_n, slices)
    owner, attr = decoder_layers(model)
    old_layers = getattr(owner, attr)
    seen: set[int] = set()
    new_layers = []
    for src in lmap:
        layer = old_layers[src]
        # the first use of a source layer moves it, later uses are deep copies:
        # every new layer owns its own tensors (no shared storage in safetensors)
        new_layers.append(layer if src not in seen else copy.deepcopy(layer))
        seen.add(src)
    setattr(owner, attr, nn.ModuleList(new_layers))
    for new_idx, layer in enumerate(new_layers):
        for mod in layer.modules():
            if isinstance(getattr(mod, "layer_idx", None), int):
                mod.layer_idx = new_idx
    for key, value in list(vars(config).items()):
        if isinstance(value, list) and len(value) == old_n and key not in ("architectures",):
            setattr(config, key, [value[i] for i in lmap])
    config.num_hidden_layers = len(lmap)
    return lmap


def course_param_counts() -> dict[str, int]:
    """Parameter counts of the course's three models, from configs on the
    meta device (no weights allocated): TinySolar-248m-4k, it downscaled to
    10 layers and up-scaled to 16."""
    out = {}
    for label, slices in (("base_12", None), ("downscaled_10", [(0, 5), (7, 12)]), ("upscaled_16", [(0, 8), (4, 12)])):
        model = build_random_model(build_config("llama", TINYSOLAR_CONFIG), device="meta")
        if slices:
            slice_layers(model, slices)
        out[label] = count_parameters(model)
    return out


def _local_config_value(ref: str, key: str) -> Any:
    """``key`` of ``ref/config.json`` when ``ref`` is a local model directory, else None."""
    config = Path(ref) / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text()).get(key)
    except (OSError, ValueError):
        return None


def hub_offline() -> bool:
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return True
    except Exception:  # pragma: no cover - huggingface_hub is a transformers dependency
        pass
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or \
        os.environ.get("TRANSFORMERS_OFFLINE", "0").lower() in ("1", "true", "yes")


_REACHABLE: dict[str, bool] = {}


def hub_reachable(timeout: float = 5.0) -> bool:
    """Can a TCP connection to the hub endpoint be opened?  A quick probe, so
    that a machine without network fails in seconds instead of after the hub
    client's retries (~50 s).  Behind an HTTP(S) proxy the probe is skipped."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    if host not in _REACHABLE:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            _REACHABLE[host] = True
        except OSError:
            _REACHABLE[host] = False
    return _REACHABLE[host]


def resolve_source(ref: str, what: str) -> str:
    """A local directory as is; a hub id only when the hub is reachable in
    principle (offline mode fails at once with a clear message)."""
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise StageError(f"init: {what} {ref!r} is a file, expected a model/tokenizer directory")
        return str(path)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise StageError(f"init: {what} {ref!r} does not exist")
    if hub_offline():
        raise StageError(
            f"init: {what} {ref!r} is not a local directory and the Hugging Face hub is offline "
            "(HF_HUB_OFFLINE=1): download it first (huggingface-cli download) and give its local path"
        )
    if not hub_reachable() and not _in_hub_cache(ref):
        raise StageError(
            f"init: {what} {ref!r} is not a local directory, not in the hub cache, and the Hugging Face hub "
            f"({os.environ.get('HF_ENDPOINT', 'https://huggingface.co')}) cannot be reached from this machine: "
            "download it elsewhere (huggingface-cli download) and give its local path"
        )
    return ref


def _in_hub_cache(ref: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(ref, "config.json"), str) or \
            isinstance(try_to_load_from_cache(ref, "tokenizer_config.json"), str)
    except Exception:
        return False


def _load_pretrained(ref: str, p: InitParams, dtype):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            ref, dtype=dtype, revision=p.revision, trust_remote_code=p.trust_remote_code,
        )
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = ""
        if "trust_remote_code" in str(e):
            hint = " (this model needs `trust_remote_code: true` in the recipe)"
        raise StageError(f"init: cannot load model {ref!r}: {msg}{hint}") from None


def _load_tok(ref: str, p: InitParams):
    try:
        return load_tokenizer(ref, revision=p.revision if ref == p.from_pretrained else None,
                              trust_remote_code=p.trust_remote_code)
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise StageError(f"init: cannot load tokenizer {ref!r}: {msg}") from None


def _has_tokenizer(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


class InitStage(Stage):
    name = "init"
    aliases = ("scale",)
    version = "1"
    description = ("Start a model: random init from a config, a pretrained model for continued pretraining, "
                   "or a layer-sliced (downscaled / depth up-scaled) copy of a base model.")
    Params = InitParams
    inputs = {
        # a base model binds only when the recipe names it: an init stage late in a recipe must not silently
        # turn a random init into continued pretraining of whatever model came before
        "model": Input(MODEL, optional=True, auto=False,
                       description="base model for continued pretraining / scaling (name it under `inputs:`)"),
        "tokenizer": Input(TOKENIZER, optional=True,
                           description="tokenizer (its vocabulary sizes a random model); a base model keeps its own"),
    }
    outputs = {"model": MODEL}

    @classmethod
    def output_facts(cls, params: InitParams, inputs: Mapping[str, Facts]) -> Mapping[str, Facts]:
        """The model's max positions, where the plan can know them: the random-init
        config, a local ``from_pretrained`` directory, or the input model's facts
        (layer slicing keeps positions)."""
        max_pos = params.config.get("max_position_embeddings")
        if params.from_pretrained is not None:
            max_pos = _local_config_value(params.from_pretrained, "max_position_embeddings")
        elif "model" in inputs:
            max_pos = inputs["model"].get(MAX_POSITIONS)
        return {"model": {MAX_POSITIONS: max_pos} if isinstance(max_pos, int) else {}}

    @classmethod
    def cross_check(cls, view: PlanView) -> list[str]:
        p: InitParams = view.params  # type: ignore[assignment]
        errors = []
        has_base = p.from_pretrained is not None or "model" in view.upstream
        if p.layer_slices and not has_base:
            errors.append(f"{view.name}: layer_slices needs a base model (from_pretrained or a `model` input)")
        if has_base and p.config:
            errors.append(f"{view.name}: `config` applies to random init only; this stage starts from a base model")
        if p.from_pretrained is not None and "model" in view.upstream:
            errors.append(f"{view.name}: both from_pretrained and a `model` input are given; use one")
        return errors

    def run(self, ctx: StageContext) -> dict[str, Artifact]:
        import torch

        p: InitParams = ctx.params  # type: ignore[assignment]
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[p.dtype]
        base_art = ctx.inputs.get("model")
        tok_art = ctx.inputs.get("tokenizer")
        if p.from_pretrained and base_art is not None:
            raise StageError("init: both from_pretrained and a `model` input are given; use one")
        base_ref = resolve_source(p.from_pretrained, "model") if p.from_pretrained else (
            str(base_art.path) if base_art is not None else None)

        # ---- tokenizer: `tokenizer` param, else the base's own (a base keeps the vocabulary it was trained
        # with), else the tokenizer input
        tokenizer = None
        if p.tokenizer:
            tokenizer = _load_tok(resolve_source(p.tokenizer, "tokenizer"), p)
        elif base_ref is not None and (not Path(base_ref).exists() or _has_tokenizer(base_ref)):
            tokenizer = _load_tok(base_ref, p)
        elif tok_art is not None:
            tokenizer = _load_tok(str(tok_art.path), p)

        torch.manual_seed(ctx.seed)
        if base_ref is None:
            # ---- 1. random init
            if p.layer_slices:
                raise StageError("init: layer_slices needs a base model (from_pretrained or a `model` input)")
            overrides = dict(p.config)
            if p.vocab_size == "auto":
                if tokenizer is None:
                    if "vocab_size" not in overrides:
                        raise StageError("init: vocab_size 'auto' needs a tokenizer (connect a tokenizer stage "
                                         "or set `tokenizer`), or give vocab_size")
                else:
                    overrides["vocab_size"] = len(tokenizer)
            else:
                overrides["vocab_size"] = p.vocab_size
            if tokenizer is not None:
                for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
                    overrides.setdefault(key, getattr(tokenizer, key))
            config = build_config(p.model_type, overrides)
            model = build_random_model(config)
            std = p.init_std or getattr(config, "initializer_range", None) or 0.02
            counts = truncated_normal_init_(model, std)
            if getattr(config, "tie_word_embeddings", False):
                model.tie_weights()
            mode = "random"
            ctx.log.info("random init of a %s model (%d layers): truncated normal std %.3g on %d linear and "
                         "%d embedding weights", config.model_type, config.num_hidden_layers, std,
                         counts["linear"], counts["embedding"])
            ctx.metrics["init_std"] = std
            lmap = list(range(config.num_hidden_layers))
        else:
            # ---- 2. pretrained base (continued pretraining), 3./4. layer slicing
            if p.config:
                raise StageError("init: `config` applies to random init only; this stage starts from a base model")
            ctx.log.info("loading base model %s", base_ref)
            model = _load_pretrained(base_ref, p, dtype)
            base_layers = model.config.num_hidden_layers
            ctx.metrics["base_num_parameters"] = count_parameters(model)
            ctx.metrics["base_num_layers"] = base_layers
            if p.layer_slices:
                lmap = slice_layers(model, p.layer_slices)
                mode = "upscale" if len(lmap) > base_layers else ("downscale" if len(lmap) < base_layers else "reslice")
                ctx.log.info("%s: %d -> %d layers from slices %s", mode, base_layers, len(lmap),
                             [list(s) for s in p.layer_slices])
            else:
                lmap = list(range(base_layers))
                mode = "pretrained"
            want = len(tokenizer) if (p.vocab_size == "auto" and tokenizer is not None) else p.vocab_size
            have = model.get_input_embeddings().weight.shape[0]
            if isinstance(want, int) and (want > have or (p.vocab_size != "auto" and want != have)):
                ctx.log.warning("resizing the embeddings from %d to %d tokens", have, want)
                model.resize_token_embeddings(want)
            if tokenizer is not None:
                for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
                    value = getattr(tokenizer, key)
                    if value is not None:
                        setattr(model.config, key, value)
                        if model.generation_config is not None:
                            setattr(model.generation_config, key, value)

        model = model.to(dtype)
        if tokenizer is None:
            ctx.log.warning("no tokenizer: the model directory will hold no tokenizer files")
        out = ctx.output_path("model")
        save_model_dir(model, tokenizer, out)
        n_params = count_parameters(model)
        vocab = int(model.get_input_embeddings().weight.shape[0])
        (out / "layer_map.json").write_text(json.dumps({"mode": mode, "layer_map": lmap,
                                                        "base": base_ref}, indent=1))
        ctx.metrics.update({
            "mode": mode,
            "num_parameters": n_params,
            "num_layers": len(lmap),
            "vocab_size": vocab,
            "layer_map": lmap,
        })
        ctx.log.info("%s model: %s parameters, %d layers, vocab %d", mode, f"{n_params:,}", len(lmap), vocab)
        return {"model": Artifact(MODEL, out, meta={"num_parameters": n_params, "num_layers": len(lmap),
                                                    "vocab_size": vocab, "layer_map": lmap, "mode": mode})}
