"""Stage keys: what a stage computes, never how or where.

key = sha256(plugin name and version, a digest of the plugin's source when it
is installed in development mode, the parameters that change results, the
content digests of the local files and directories its parameters point at,
the content digests of its inputs (the upstream *outputs*, so a re-run
upstream stage that produces identical bytes leaves everything downstream
cached), the seed).  Parameters marked as run settings (workers, threads,
batch sizes of inference-only work) and absolute paths are left out, so the
same recipe in two checkouts, on two machines, has the same keys."""

from __future__ import annotations

import hashlib
import json
import site
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .digests import DigestCache, path_digest, walk_files
from .recipe import Recipe, ResolvedStage
from .stage import Params, Stage, split_params

LOCAL = "<local input>"


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()


def _blank(tree: dict[str, Any], dotted: str) -> None:
    """Replace the value at ``a.0.b`` by a marker (its content is keyed instead)."""
    *parents, last = dotted.split(".")
    node: Any = tree
    for part in parents:  # a path that does not name a parameter (e.g. "entry/file.txt") blanks nothing
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = LOCAL
    elif isinstance(node, dict) and last in node:
        node[last] = LOCAL


_SOURCE_DIGESTS: dict[str, str | None] = {}


def plugin_source_digest(stage_cls: type[Stage[Any]], cache: DigestCache) -> str | None:
    """A digest of the plugin's source when it is not installed in a
    site-packages directory (an editable / development install), so an edited
    plugin is seen; None for a normal install (its version says it all).  For
    a stage in a subpackage (``pkg.family.stage``) the family's directory and a
    sibling ``common`` package are digested, so an edit in one family does not
    re-key the others; else the whole top-level package."""
    parts = stage_cls.__module__.split(".")
    scope = ".".join(parts[:2]) if len(parts) > 2 else parts[0]
    if scope in _SOURCE_DIGESTS:
        return _SOURCE_DIGESTS[scope]
    module = sys.modules.get(parts[0])
    where = getattr(module, "__file__", None)
    value = None
    if where:
        pkg = Path(where).resolve().parent
        installed = [Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]]
        if not any(pkg.is_relative_to(sp) for sp in installed):
            roots = [pkg / parts[1], pkg / "common"] if len(parts) > 2 else [pkg]
            files = [p for root in roots if root.is_dir() for p in walk_files(root) if p.suffix == ".py"]
            value = digest({p.relative_to(pkg).as_posix(): cache.digest(p) for p in files})
    _SOURCE_DIGESTS[scope] = value
    return value


def key_parts(
    recipe: Recipe, stage: ResolvedStage, inputs: Mapping[str, str | None], cache: DigestCache
) -> dict[str, Any]:
    """Everything a stage's key covers (kept in the manifest, so `recipe plan`
    can name what changed); ``inputs`` maps each slot to the digest of the
    upstream output bound there."""
    cls, params = stage.stage_cls, stage.params
    key_params, _ = split_params(params)
    local = {}
    for dotted, path in sorted(cls.local_inputs(params).items()):
        _blank(key_params, dotted)
        local[dotted] = path_digest(Path(path), cache) if Path(path).exists() else f"missing:{path}"
    parts = {
        "plugin": cls.name,
        "version": cls.version,
        "source": plugin_source_digest(cls, cache),
        "params": key_params,
        "local": local,
        "extra": cls.fingerprint_extra(params),
        "inputs": dict(sorted(inputs.items())),
        "seed": recipe.seed,
    }
    if stage.launch is not None and stage.launch.world_size() > 1:
        # ranks x per-device batch is the global batch, and it changes the result; the
        # launcher and the strategy (DDP, FSDP, ZeRO shard the same computation) do not key it
        parts["world_size"] = stage.launch.world_size()
    return parts


def run_settings(params: Params) -> dict[str, Any]:
    return split_params(params)[1]


def describe_change(before: Mapping[str, Any] | None, now: Mapping[str, Any]) -> list[str]:
    """What differs between two stages' key parts, in words (at most a few items)."""
    if not before:
        return []
    out: list[str] = []
    if before.get("plugin") != now["plugin"] or before.get("version") != now["version"]:
        out.append(f"plugin {before.get('plugin')} {before.get('version')} -> {now['plugin']} {now['version']}")
    if before.get("source") != now["source"]:
        out.append("plugin source edited")
    out += [f"params.{p}" for p in _diff(before.get("params"), now["params"])]
    for field, d in now["local"].items():
        if (before.get("local") or {}).get(field) != d:
            out.append(f"local input {field} changed")
    for slot, d in now["inputs"].items():
        if (before.get("inputs") or {}).get(slot) != d:
            out.append(f"input {slot} changed")
    if before.get("seed") != now["seed"]:
        out.append(f"seed {before.get('seed')} -> {now['seed']}")
    if before.get("world_size", 1) != now.get("world_size", 1):
        out.append(f"processes {before.get('world_size', 1)} -> {now.get('world_size', 1)}")
    if before.get("extra") != now["extra"]:
        out.append("plugin-specific inputs changed")
    return out


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return out
    if a != b:
        return [f"{path}: {_short(a)} -> {_short(b)}"]
    return []


def _short(v: Any) -> str:
    text = canonical(v)
    return text if len(text) <= 40 else text[:37] + "..."
