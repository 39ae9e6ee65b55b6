"""The recipe's lineage in a GGUF file: ``recipe_runner.*`` metadata keys
(recipe, stage and its fingerprint, seed, the source model's producer, every
upstream stage, the whole lineage as JSON, the package version) and a
``general.description`` sentence."""

from __future__ import annotations

import json
from typing import Any

from recipe_runner import Artifact, Lineage

from .writer import MetadataValue


def lineage_metadata(
    lineage: Lineage | None, model_art: Artifact, gguf_type: str, *, recipe: str, stage: str, seed: int
) -> tuple[dict[str, MetadataValue], str]:
    """GGUF metadata keys and the description.  ``recipe``, ``stage`` and
    ``seed`` (the stage context's) stand in where there is no lineage."""
    recipe = (lineage.recipe if lineage else "") or recipe
    meta: dict[str, MetadataValue] = {
        "recipe_runner.recipe": recipe,
        "recipe_runner.stage": (lineage.stage.name if lineage else "") or stage,
        "recipe_runner.stage_fingerprint": (lineage.stage.fingerprint if lineage else "") or "",
        "recipe_runner.seed": int(lineage.seed if lineage else seed),
        "recipe_runner.source_model_stage": model_art.producer or "",
        "recipe_runner.source_model_fingerprint": model_art.fingerprint or "",
        "recipe_runner.upstream": [f"{u.name}:{u.type}:{u.fingerprint}" for u in (lineage.upstream if lineage else ())],
        "recipe_runner.lineage": json.dumps(_lineage_json(lineage), sort_keys=True, default=str),
    }
    version = _package_version(lineage)
    if version:
        meta["recipe_runner.version"] = version
    return meta, _description(lineage, gguf_type, recipe)


def _lineage_json(lineage: Lineage | None) -> dict[str, Any]:
    return lineage.to_json() if lineage else {}


def _package_version(lineage: Lineage | None) -> str | None:
    versions = lineage.versions if lineage else {}
    version = versions.get("recipe-runner") or versions.get("recipe_runner")
    return str(version) if version else None


def _description(lineage: Lineage | None, gguf_type: str, recipe: str) -> str:
    desc = f"{gguf_type.upper()} GGUF written by recipe-runner"
    if recipe:
        desc += f" from recipe '{recipe}'"
    if lineage and lineage.stage.name:
        desc += f", stage '{lineage.stage.name}' (fingerprint {lineage.stage.fingerprint[:12]})"
    return desc
