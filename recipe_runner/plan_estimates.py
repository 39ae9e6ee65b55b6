"""What ``recipe plan`` shows under its table for each stage that runs
distributed: processes x nodes, the strategy, and the plugin's own estimate
(``Stage.plan_estimate``: memory per device, time per step).  The engine only
builds each stage's PlanView and formats well-known keys; a plugin bug shows
as a line, never as a crash of the plan."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .recipe import Recipe, ResolvedStage
from .stage import PlanView, Upstream

GIB = 2**30
#: breakdown keys of memory_per_device, in display order, with their short console names
_PARTS = {
    "parameters": "params",
    "gradients": "grads",
    "optimizer_states": "optimizer",
    "activations": "activations",
    "autocast_weight_copies": "bf16 copies",
    "ddp_buckets": "ddp buckets",
    "reference_model": "reference",
    "step_temporaries": "step temps",
}


def plan_view(recipe: Recipe, stage: ResolvedStage) -> PlanView[Any]:
    """The stage's params and, per bound input slot, its producer and the facts of the output bound there."""
    by_name = {s.name: s for s in recipe.stages}
    upstream: dict[str, Upstream] = {}
    for slot, b in stage.bindings.items():
        if b is not None:
            src = by_name[b.stage]
            upstream[slot] = Upstream(src.name, src.type, src.params, src.facts.get(b.output, {}))
    return PlanView(stage.name, stage.params, upstream)


def stage_estimates(recipe: Recipe, names: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per distributed stage (of ``names``, default all): its launch and the plugin's estimate."""
    out: dict[str, dict[str, Any]] = {}
    for stage in recipe.stages:
        if stage.launch is None or (names is not None and stage.name not in names):
            continue
        launch = stage.launch
        entry: dict[str, Any] = {
            "processes": launch.per_node(),
            "nodes": launch.nodes,
            "world_size": launch.world_size(),
            "launcher": launch.launcher,
            "strategy": launch.strategy,
            "preset": launch.preset,
        }
        try:
            entry["estimate"] = dict(stage.stage_cls.plan_estimate(plan_view(recipe, stage), launch))
        except Exception as e:  # a plugin bug must not hide the plan
            entry["estimate"] = {"unknown": f"plan_estimate of plugin '{stage.type}' failed: {type(e).__name__}: {e}"}
        out[stage.name] = entry
    return out


def _size(n: float, unit: str) -> str:
    v = n / (GIB if unit == "GiB" else 2**20)
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _seconds(s: float) -> str:
    return f"{s:,.3g} s" if s >= 1 else f"{s * 1000:.3g} ms"


def estimate_lines(name: str, entry: Mapping[str, Any]) -> list[str]:
    """Console lines (under 80 columns) of one stage's launch and estimate."""
    est = entry.get("estimate") or {}
    how = entry["preset"] or entry["strategy"]
    nodes = entry["nodes"]
    lines = [f"{name}: {entry['processes']} processes x {nodes} node{'s' if nodes > 1 else ''}, {how}"]
    if "unknown" in est:
        return [*lines, f"  no estimate: {est['unknown']}"]
    mem = est.get("memory_per_device")
    if isinstance(mem, Mapping):
        unit = "GiB" if mem["total_bytes"] >= GIB else "MiB"
        head = f"  memory/device ~{_size(mem['total_bytes'], unit)} {unit} (peak: {mem['peak_phase']}; "
        lines.append(head + f"{est.get('precision')}, {est.get('method')}, {est.get('device')})")
        parts = [f"{_PARTS.get(k, k)} {_size(v, unit)}" for k, v in mem.get("breakdown_bytes", {}).items()]
        lines.extend(_wrap("    ", parts, unit))
        if mem.get("cpu_offload_bytes"):
            lines.append(f"    + {_size(mem['cpu_offload_bytes'], unit)} {unit} offloaded to CPU memory")
    step = est.get("time_per_step")
    if isinstance(step, Mapping):
        lines.append(f"  time/step ~{_seconds(step['seconds'])}: {step['flops']:.3g} FLOPs, {step['tokens']:,} tokens")
        lines.append(f"    (estimate: {step['assumes']})")
    lines.extend(f"  note: {n}" for n in est.get("notes", []))
    return lines


def _wrap(indent: str, parts: list[str], unit: str, width: int = 76) -> list[str]:
    lines, line = [], indent
    for part in parts:
        text = part + ","
        if len(line) + len(text) + 1 > width and line.strip():
            lines.append(line.rstrip())
            line = indent
        line += text + " "
    if line.strip():
        lines.append(line.rstrip().rstrip(",") + f" {unit}")
    return lines
