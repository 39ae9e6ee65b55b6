"""Content fingerprints of stages.

fingerprint = sha256(plugin name, plugin version, resolved parameters,
fingerprints of the inputs, seed, and whatever the plugin adds through
``fingerprint_extra`` (e.g. stats of the local files it reads))."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .recipe import Recipe, ResolvedStage


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()


def params_digest(stage: ResolvedStage) -> str:
    return digest(stage.params_json())


def stage_fingerprints(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """For each stage: its fingerprint and the parts it was computed from
    (so ``recipe plan`` can say *why* a stage will run)."""
    out: dict[str, dict[str, Any]] = {}
    for s in recipe.stages:
        inputs = {
            slot: (f"{out[b.stage]['fingerprint']}:{b.output}" if b else None) for slot, b in sorted(s.bindings.items())
        }
        parts = {
            "plugin": s.stage_cls.name,
            "version": s.stage_cls.version,
            "params": s.params_json(),
            "extra": s.stage_cls.fingerprint_extra(s.params),
            "inputs": inputs,
            "seed": recipe.seed,
        }
        out[s.name] = {
            "fingerprint": digest(parts),
            "params_digest": digest(
                [parts["plugin"], parts["version"], parts["params"], parts["extra"], parts["seed"]]
            ),
            "inputs": inputs,
        }
    return out
