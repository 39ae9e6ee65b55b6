"""Layer freezing as in the Llama-2 instruction-tuning recipe: only the top
decoder layers, the final norm and the head learn; optionally the input
embeddings are frozen too."""

from __future__ import annotations

from typing import Any

from recipe_runner import StageError

from ...common.models import count_parameters, decoder_layers


def freeze_layers(model: Any, train_top_layers: int | None, freeze_embeddings: bool) -> dict[str, int]:
    """Freeze all but the top ``train_top_layers`` decoder layers, the final
    norm and the head (None: train every layer), and the input embeddings
    when asked; returns the trainable and total parameter counts."""
    if train_top_layers is not None:
        _train_only_top_layers(model, train_top_layers, head_trains=not freeze_embeddings)
    if freeze_embeddings:
        for param in model.get_input_embeddings().parameters():
            param.requires_grad_(False)
    trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
    return {"trainable_parameters": trainable, "total_parameters": count_parameters(model)}


def _train_only_top_layers(model: Any, k: int, head_trains: bool) -> None:
    owner, attr = decoder_layers(model)
    layers = getattr(owner, attr)
    if k > len(layers):
        raise StageError(f"pretrain: train_top_layers={k} but the model has {len(layers)} layers")
    for param in model.parameters():
        param.requires_grad_(False)
    for layer in list(layers)[len(layers) - k :]:
        for param in layer.parameters():
            param.requires_grad_(True)
    layer_params = {id(q) for q in layers.parameters()}
    emb = {id(q) for q in model.get_input_embeddings().parameters()}
    # everything that is neither a decoder layer nor the input embedding:
    # final norm, LM head (and e.g. GPT-2's final ln_f)
    for param in model.parameters():
        if id(param) not in layer_params and id(param) not in emb:
            param.requires_grad_(True)
    if head_trains and model.get_output_embeddings() is not None:
        for param in model.get_output_embeddings().parameters():
            param.requires_grad_(True)
