"""The lineage graph as inline SVG: stages as nodes in layers left to right
(a stage one layer right of its latest input; a stage with no input just left
of its first consumer), input bindings as arrows named by their slot."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from .collect import StageView

NODE_W, NODE_H = 140, 46
STEP_X, STEP_Y = 166, 64
MARGIN = 12
STATUS_CLASS = {"done": "done", "cached": "cached", "failed": "failed", "interrupted": "failed", "running": "running"}


@dataclass
class Placed:
    stage: StageView
    layer: int
    row: int

    @property
    def x(self) -> int:
        return MARGIN + self.layer * STEP_X

    @property
    def y(self) -> int:
        return MARGIN + self.row * STEP_Y


def producers(stage: StageView) -> list[str]:
    """Names of the stages whose outputs feed ``stage``, in slot order."""
    return [binding.split(".", 1)[0] for binding in stage.inputs.values()]


def layers(stages: list[StageView]) -> dict[str, int]:
    layer: dict[str, int] = {}
    for s in stages:
        ups = [layer[p] for p in producers(s) if p in layer]
        layer[s.name] = max(ups) + 1 if ups else 0
    for s in reversed(stages):  # pull a stage with no inputs next to its first consumer
        consumers = [layer[c.name] for c in stages if s.name in producers(c)]
        if not producers(s) and consumers:
            layer[s.name] = max(0, min(consumers) - 1)
    return layer


def place(stages: list[StageView]) -> dict[str, Placed]:
    """Each stage's layer and row: the row of its first input's producer where
    that is free in its layer, else the first free row."""
    layer = layers(stages)
    taken: dict[int, set[int]] = {}
    placed: dict[str, Placed] = {}
    for s in sorted(stages, key=lambda st: layer[st.name]):
        rows = taken.setdefault(layer[s.name], set())
        wanted = [placed[p].row for p in producers(s) if p in placed]
        row = wanted[0] if wanted and wanted[0] not in rows else min(set(range(len(stages) + 1)) - rows)
        rows.add(row)
        placed[s.name] = Placed(s, layer[s.name], row)
    return placed


def _edge(src: Placed, dst: Placed, slot: str, arrow_id: str, bottom_row: int) -> str:
    """An arrow from ``src`` to ``dst``: a curve between neighbouring layers; a
    longer one runs along the gap under the lowest row so it crosses no stage."""
    x1, y1 = src.x + NODE_W, src.y + NODE_H // 2
    x2, y2 = dst.x - 4, dst.y + NODE_H // 2
    if dst.layer - src.layer > 1:
        gap = MARGIN + bottom_row * STEP_Y + NODE_H + (STEP_Y - NODE_H) // 2
        path = (
            f"M{x1},{y1} C{x1 + 14},{y1} {x1 + 10},{gap} {x1 + 26},{gap} "
            f"L{x2 - 26},{gap} C{x2 - 10},{gap} {x2 - 14},{y2} {x2},{y2}"
        )
    else:
        bend = (x2 - x1) / 2
        path = f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}"
    title = escape(f"{src.stage.name} → {dst.stage.name} (input {slot})")
    return f'<path class="edge" d="{path}" marker-end="url(#{arrow_id})"><title>{title}</title></path>'


def _node(p: Placed) -> str:
    s = p.stage
    status = "cached" if s.cached and s.status == "done" else s.status
    css = STATUS_CLASS.get(status, "pending") + (" changed" if s.changed else "")
    name = s.name if len(s.name) <= 18 else s.name[:17] + "…"
    took = f"{s.seconds:.1f}s" if s.seconds is not None else status
    sub = f"{s.type} · {'cached' if status == 'cached' else took}"
    tip = f"{s.name} ({s.type}): {status}" + (f", {s.seconds:.1f} s" if s.seconds is not None else "")
    tip += "; changed in the recipe since this run" if s.changed else ""
    return (
        f'<g class="node {css}" data-stage="{escape(s.name)}"><title>{escape(tip)}</title>'
        f'<rect x="{p.x}" y="{p.y}" width="{NODE_W}" height="{NODE_H}" rx="8"/>'
        f'<text x="{p.x + 10}" y="{p.y + 19}" class="name">{escape(name)}</text>'
        f'<text x="{p.x + 10}" y="{p.y + 36}" class="sub">{escape(sub)}</text></g>'
    )


def lineage_svg(stages: list[StageView], graph_id: str = "lineage") -> str:
    """The graph of ``stages`` (an inline ``<svg>``; ``graph_id`` keeps the
    arrow marker's id unique when a page holds two graphs)."""
    if not stages:
        return '<p class="muted">no stages</p>'
    placed = place(stages)
    bottom_row = max(p.row for p in placed.values())
    width = MARGIN * 2 + max(p.layer for p in placed.values()) * STEP_X + NODE_W
    height = MARGIN * 2 + bottom_row * STEP_Y + STEP_Y
    arrow = f"{graph_id}-arrow"
    edges = [
        _edge(placed[binding.split(".", 1)[0]], placed[s.name], slot, arrow, bottom_row)
        for s in stages
        for slot, binding in s.inputs.items()
        if binding.split(".", 1)[0] in placed
    ]
    return (
        f'<svg class="lineage" id="{escape(graph_id)}" viewBox="0 0 {width} {height}" '
        f'style="min-width:{int(width * 0.7)}px;max-width:{width}px" role="img" aria-label="lineage graph">'
        f'<defs><marker id="{arrow}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrowhead"/></marker></defs>'
        + "".join(edges)
        + "".join(_node(p) for p in placed.values())
        + "</svg>"
    )
