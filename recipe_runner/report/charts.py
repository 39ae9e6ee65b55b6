"""The training charts of a report as data for its inline script: one chart
per logged quantity (loss, validation loss, learning rate, gradient norm,
then the rest), one series per training stage, and in a comparison one per
stage and run (the second run dashed, same colour per stage)."""

from __future__ import annotations

from typing import Any

from .collect import Curve, RunReport

#: quantities charted first, with their titles; the rest follow by name
TITLES = {
    "loss": "Training loss",
    "eval_loss": "Validation loss",
    "learning_rate": "Learning rate",
    "grad_norm": "Gradient norm",
}
PALETTE = (
    "#2563eb",
    "#e4572e",
    "#17a673",
    "#9c4dcc",
    "#f2a900",
    "#0fa3b1",
    "#d6336c",
    "#6b7a8f",
    "#7cb518",
    "#8d5a97",
)


def chart_order(metric: str) -> tuple[int, str]:
    known = list(TITLES)
    return (known.index(metric), "") if metric in known else (len(known), metric)


def chart_title(metric: str) -> str:
    return TITLES.get(metric, metric.replace("_", " "))


def stage_colours(names: list[str]) -> dict[str, str]:
    """A colour per stage name, in order of first appearance."""
    colours: dict[str, str] = {}
    for name in names:
        if name not in colours:
            colours[name] = PALETTE[len(colours) % len(PALETTE)]
    return colours


def training_charts(runs: list[tuple[str, RunReport]]) -> list[dict[str, Any]]:
    """Chart specs for ``runs`` (label, report): one run gives series named by
    stage; several give "label · stage" series, the later runs dashed.  A chart
    where no series has two points is left out (nothing to draw a line through)."""
    curves: list[tuple[int, str, Curve]] = [(i, label, c) for i, (label, r) in enumerate(runs) for c in r.curves]
    colours = stage_colours([c.stage for _, _, c in curves])
    metrics = sorted({c.metric for _, _, c in curves}, key=chart_order)
    charts: list[dict[str, Any]] = []
    for metric in metrics:
        series: list[dict[str, Any]] = [
            {
                "label": f"{label} · {c.stage}" if len(runs) > 1 else c.stage,
                "stage": c.stage,
                "run": label,
                "color": colours[c.stage],
                "dashed": i > 0,
                "points": c.points,
            }
            for i, label, c in curves
            if c.metric == metric
        ]
        if any(len(s["points"]) > 1 for s in series):
            charts.append(
                {"id": f"chart-{len(charts)}", "metric": metric, "title": chart_title(metric), "series": series}
            )
    return charts
