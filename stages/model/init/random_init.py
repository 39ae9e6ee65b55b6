"""Random initialisation from a config, the course's way: a fresh config of
any Hugging Face causal-LM architecture, an untrained model for it, and the
truncated-normal init of its weights."""

from __future__ import annotations

from typing import Any

from recipe_runner import StageError

from .params import InitParams
from .tokenizer_wiring import SPECIAL_TOKEN_IDS


def build_config(model_type: str = "llama", overrides: dict[str, Any] | None = None) -> Any:
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


def build_random_model(config: Any, device: str | None = None) -> Any:
    """An untrained causal LM for ``config`` (``device='meta'`` allocates no
    memory, for parameter counts)."""
    import torch
    from transformers import AutoModelForCausalLM

    if device == "meta":
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    return AutoModelForCausalLM.from_config(config)


def truncated_normal_init_(model: Any, std: float = 0.02) -> dict[str, int]:
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
            if isinstance(weight, torch.Tensor):
                if id(weight) in done:
                    continue
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


def random_init_config(p: InitParams, tokenizer: Any | None) -> Any:
    """The config of a randomly initialised model: ``p.config`` plus the
    vocabulary size (the tokenizer's length for 'auto') and the tokenizer's
    bos/eos/pad ids where the config does not set them."""
    overrides = dict(p.config)
    if p.vocab_size != "auto":
        overrides["vocab_size"] = p.vocab_size
    elif tokenizer is not None:
        overrides["vocab_size"] = len(tokenizer)
    elif "vocab_size" not in overrides:
        raise StageError(
            "init: vocab_size 'auto' needs a tokenizer (connect a tokenizer stage or set `tokenizer`), or give "
            "vocab_size"
        )
    if tokenizer is not None:
        for key in SPECIAL_TOKEN_IDS:
            overrides.setdefault(key, getattr(tokenizer, key))
    return build_config(p.model_type, overrides)


def random_model(config: Any, init_std: float | None) -> tuple[Any, float, dict[str, int]]:
    """(model, std, counts): an untrained model for ``config`` with the
    truncated-normal init at ``init_std`` (default: the config's
    initializer_range, else 0.02), its head re-tied where the config ties it."""
    model = build_random_model(config)
    std = init_std or getattr(config, "initializer_range", None) or 0.02
    counts = truncated_normal_init_(model, std)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model, std, counts
