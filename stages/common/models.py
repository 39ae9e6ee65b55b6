"""Model and tokenizer directories shared by the stage families: loading a
causal LM and its tokenizer, saving a self-contained model directory (and
the ``model`` artifact describing it), the starting model of a stage that
takes either a ``model`` input or ``model_name_or_path``, and facts read off
a loaded model (parameter count, context length, decoder layers).  Heavy
imports stay inside the functions so importing a stage module stays cheap."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from recipe_runner.artifacts import MODEL, Artifact
from recipe_runner.stage import Input, Params, StageContext, StageError

from .devices import resolve_device, resolve_precision, torch_dtype

#: the columns of a training / evaluation row that a causal LM's forward takes
MODEL_COLUMNS = ("input_ids", "labels", "attention_mask", "position_ids")

MODEL_PATH_DESC = (
    "a hub id or local directory of the starting model; when set, the stage takes no 'model' input "
    "(otherwise the latest upstream model artifact is used)"
)
MODEL_INPUT = Input(MODEL, optional=True, description="the starting causal LM (or set model_name_or_path)")


def load_tokenizer(path: str | Path, **kwargs: Any) -> Any:
    """``AutoTokenizer.from_pretrained``, with the EOS token as the pad token
    when the tokenizer has none (batched generation and scoring pad)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), **kwargs)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str | Path, precision: str = "fp32", device: str = "cpu", **kwargs: Any) -> Any:
    """A causal LM in the given resolved precision, on the given device."""
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(precision), **kwargs)
    return model.to(resolve_device(device))


def load_for_inference(path: str | Path, device: str = "auto", precision: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) of a model directory or hub id, the model in eval
    mode on the resolved device and precision."""
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, precision=prec, device=dev)
    model.eval()
    return model, tokenizer


def local_path(ref: str | None) -> Path | None:
    """The local file or directory a model, tokenizer or data parameter names,
    or None for a hub id (or anything else that does not exist here)."""
    if not ref:
        return None
    path = Path(ref).expanduser()
    return path if path.exists() else None


def save_model_dir(model: Any, tokenizer: Any | None, path: str | Path, max_shard_size: str | int = "5GB") -> Path:
    """A self-contained model directory: config, safetensors weights,
    generation config and (when known) the tokenizer, so any later stage or
    ``from_pretrained`` needs nothing else.  Every file gets the permissions
    the umask gives a new file (see :func:`match_umask`)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True, max_shard_size=max_shard_size)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    match_umask(path)
    return path


def current_umask() -> int:
    """The process's umask: from /proc where the kernel shows it, else read by
    setting it and putting it back (a moment in which another thread's new
    file would get stricter permissions, never looser ones)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def match_umask(root: Path) -> None:
    """Give every file under ``root`` the permissions of a file newly created
    here (0666 less the umask): safetensors writes its weights through a
    private temporary file, so ``model.safetensors`` would be 0600 while the
    config and tokenizer next to it are 0644."""
    mode = 0o666 & ~current_umask()
    files = root.rglob("*") if root.is_dir() else [root]
    for f in files:
        if f.is_file() and not f.is_symlink():
            f.chmod(mode)


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def max_positions(model: Any) -> int | None:
    """The model's context length (``max_position_embeddings`` of its text
    config), or None when the architecture does not say."""
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


def model_meta(model: Any, tokenizer: Any | None = None) -> dict[str, Any]:
    """Artifact metadata of a causal LM: parameters, layers, vocabulary (the
    tokenizer's length when there is one)."""
    cfg = model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return {
        "num_parameters": int(count_parameters(model)),
        "num_layers": int(getattr(text_cfg, "num_hidden_layers", 0) or 0),
        "vocab_size": int(len(tokenizer) if tokenizer is not None else getattr(text_cfg, "vocab_size", 0)),
    }


def save_model_artifact(model: Any, tokenizer: Any, path: Path, **extra_meta: Any) -> Artifact:
    """Save a model directory and return the ``model`` artifact describing it."""
    save_model_dir(model, tokenizer, path)
    return Artifact(kind=MODEL, path=path, meta={**model_meta(model, tokenizer), **extra_meta})


def model_input_slots(params: Params, base: dict[str, Input], slot: str = "model") -> dict[str, Input]:
    """Drop the model input slot when the recipe names the model by path."""
    slots = dict(base)
    if getattr(params, "model_name_or_path", None):
        slots.pop(slot, None)
    return slots


def resolve_model_path(ctx: StageContext[Any], slot: str = "model") -> str:
    """The starting model: ``model_name_or_path`` when the recipe sets it,
    else the directory of the stage's ``model`` input."""
    path = getattr(ctx.params, "model_name_or_path", None)
    if path:
        return str(path)
    art = ctx.inputs.get(slot)
    if art is None:
        raise StageError(
            f"stage {ctx.name!r} needs a starting model: an upstream '{slot}' artifact or the "
            f"'model_name_or_path' parameter"
        )
    return str(art.path)


def decoder_layers(model: Any) -> tuple[Any, str]:
    """The ``nn.ModuleList`` of decoder layers of a causal LM (``model.model.layers``
    for Llama-likes, ``model.transformer.h`` for GPT-2, ...) as (owner, attribute name)."""
    from torch import nn

    n = model.config.num_hidden_layers
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None) or model
    for owner in (base, getattr(base, "decoder", None), model):
        if owner is None:
            continue
        for attr in ("layers", "h", "blocks", "block"):
            layers = getattr(owner, attr, None)
            if isinstance(layers, nn.ModuleList) and len(layers) == n:
                return owner, attr
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n:
            owner_name, _, attr = name.rpartition(".")
            return model.get_submodule(owner_name) if owner_name else model, attr
    raise StageError(f"cannot find the decoder layers of {type(model).__name__} (no ModuleList of {n} layers)")
