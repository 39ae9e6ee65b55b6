"""Layer slicing of a decoder stack: downscaling (a subset of the layers) and
SOLAR's depth up-scaling (overlapping slices, ``[[0,8],[4,12]]`` turns 12
layers into 16), the layers copied bit for bit as mergekit's passthrough merge
copies them.  Embeddings, the final norm and the LM head are carried over; the
config's layer count and per-layer lists follow and every attention module's
``layer_idx`` is renumbered so the KV cache addresses the right slot."""

from __future__ import annotations

from typing import Any

from recipe_runner import StageError

from ...common.models import decoder_layers


def layer_map(num_layers: int, slices: list[tuple[int, int]] | None) -> list[int]:
    """Source layer index of each new layer."""
    if not slices:
        return list(range(num_layers))
    out: list[int] = []
    for start, end in slices:
        if end > num_layers:
            raise StageError(f"init: layer slice [{start}, {end}) reaches past the base model's {num_layers} layers")
        out.extend(range(start, end))
    return out


def slicing_mode(base_layers: int, new_layers: int) -> str:
    """'upscale', 'downscale' or 'reslice' (as many layers as before)."""
    if new_layers > base_layers:
        return "upscale"
    return "downscale" if new_layers < base_layers else "reslice"


def slice_layers(model: Any, slices: list[tuple[int, int]]) -> list[int]:
    """Rebuild ``model``'s decoder stack from ``slices`` of its own layers, in
    place: depth up-scaling (overlapping slices, each copied layer a deep copy)
    or downscaling (a subset).  Embeddings, final norm and head are untouched,
    i.e. carried over.  The config's ``num_hidden_layers`` and per-layer lists
    (``layer_types``, ...) follow, and every module's ``layer_idx`` is
    renumbered so the KV cache stays consistent.  Works on the meta device.
    Returns the layer map (source index of each new layer)."""
    from torch import nn

    old_n = model.config.num_hidden_layers
    lmap = layer_map(old_n, slices)
    owner, attr = decoder_layers(model)
    new_layers = _copied_layers(getattr(owner, attr), lmap)
    setattr(owner, attr, nn.ModuleList(new_layers))
    _renumber_layer_indices(new_layers)
    _slice_per_layer_config(model.config, old_n, lmap)
    return lmap


def _copied_layers(old_layers: Any, lmap: list[int]) -> list[Any]:
    """The first use of a source layer moves it, later uses are deep copies:
    every new layer owns its own tensors (no shared storage in safetensors)."""
    import copy

    seen: set[int] = set()
    new_layers = []
    for src in lmap:
        layer = old_layers[src]
        new_layers.append(layer if src not in seen else copy.deepcopy(layer))
        seen.add(src)
    return new_layers


def _renumber_layer_indices(layers: list[Any]) -> None:
    for new_idx, layer in enumerate(layers):
        for mod in layer.modules():
            if isinstance(getattr(mod, "layer_idx", None), int):
                mod.layer_idx = new_idx


def _slice_per_layer_config(config: Any, old_n: int, lmap: list[int]) -> None:
    """``num_hidden_layers`` and every per-layer list (``layer_types``, ...)
    of ``config`` follow the layer map."""
    for key, value in list(vars(config).items()):
        if isinstance(value, list) and len(value) == old_n and key not in ("architectures",):
            setattr(config, key, [value[i] for i in lmap])
    config.num_hidden_layers = len(lmap)
