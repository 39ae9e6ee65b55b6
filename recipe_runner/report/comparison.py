"""The sections only a comparison of two runs has: every stage's metrics side
by side with the change, and what differs between the two recipes."""

from __future__ import annotations

from typing import Any

from .collect import RunReport
from .sections import change, esc, fmt, scalar_metrics, table

#: how metric names end where lower / higher is better (a change is coloured green or red)
LOWER_IS_BETTER = ("loss", "perplexity", "perplexity_after", "kl", "seconds", "runtime_s", "cpu_s")
HIGHER_IS_BETTER = (
    "acc",
    "acc_norm",
    "accuracy",
    "reward_after",
    "reward_gain",
    "score",
    "win_rate",
    "tokens_per_second",
)


def direction(metric: str) -> int:
    """+1 when a higher value of ``metric`` is better, -1 when lower is, 0 when unknown."""
    name = metric.lower().rsplit("/", 1)[-1]
    if name.endswith(HIGHER_IS_BETTER):
        return 1
    return -1 if name.endswith(LOWER_IS_BETTER) else 0


def stage_order(a: RunReport, b: RunReport) -> list[str]:
    names = [s.name for s in a.stages]
    return names + [s.name for s in b.stages if s.name not in names]


def _metrics_of(report: RunReport) -> dict[str, dict[str, Any]]:
    out = {s.name: scalar_metrics(s.metrics) for s in report.stages}
    for e in report.evals:  # an eval report's metrics, with its stderr left out
        out[e.stage] = {**out.get(e.stage, {}), **scalar_metrics(e.metrics)}
        for k in [k for k in out[e.stage] if k.endswith("_stderr")]:
            del out[e.stage][k]
    return out


def _change_cell(metric: str, x: Any, y: Any) -> str:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y))
    if not numbers:
        return "" if x == y or x is None or y is None else '<span class="muted">differs</span>'
    return change(x, y, direction(metric))


def metric_rows(stage: str, a: dict[str, Any], b: dict[str, Any]) -> list[list[str]]:
    keys = list(a) + [k for k in b if k not in a]
    return [
        [
            esc(stage) if i == 0 else "",
            esc(k),
            esc(fmt(a.get(k))),
            esc(fmt(b.get(k))),
            _change_cell(k, a.get(k), b.get(k)),
        ]
        for i, k in enumerate(keys)
    ]


def compare_metrics(a: RunReport, b: RunReport, labels: tuple[str, str]) -> str:
    """Eval metrics of both runs in one table, then every other stage's metrics
    (collapsed), each with B's change against A (green where it improved)."""
    ma, mb = _metrics_of(a), _metrics_of(b)
    evals = {e.stage for e in a.evals} | {e.stage for e in b.evals}
    headers = ["stage", "metric", labels[0], labels[1], f"change {labels[0]} → {labels[1]}"]
    eval_rows = [r for n in stage_order(a, b) if n in evals for r in metric_rows(n, ma.get(n, {}), mb.get(n, {}))]
    parts = [table(headers, eval_rows, "compare")] if eval_rows else ['<p class="muted">no eval report</p>']
    for name in stage_order(a, b):
        if name in evals or not (ma.get(name) or mb.get(name)):
            continue
        rows = metric_rows(name, ma.get(name, {}), mb.get(name, {}))
        parts.append(
            f"<details><summary><b>{esc(name)}</b> <span class='muted'>{len(rows)} metrics</span></summary>"
            f"{table(headers, rows, 'compare')}</details>"
        )
    return "".join(parts)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts and lists as {"a.b.0.c": leaf}."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        items = [(str(i), v) for i, v in enumerate(value)]
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _stage_params(report: RunReport) -> dict[str, dict[str, Any]]:
    stages = report.recipe.resolved.get("stages") or []
    return {s["name"]: flatten({"params": s.get("params", {}), "inputs": s.get("inputs", {})}) for s in stages}


def recipe_differences(a: RunReport, b: RunReport) -> list[tuple[str, str, Any, Any]]:
    """(stage, parameter path, value in A, value in B) of every parameter and
    input binding that differs, stage by stage ("—" where one side has none)."""
    pa, pb = _stage_params(a), _stage_params(b)
    rows: list[tuple[str, str, Any, Any]] = []
    if a.recipe.seed != b.recipe.seed:
        rows.append(("(recipe)", "seed", a.recipe.seed, b.recipe.seed))
    for name in stage_order(a, b):
        if name not in pa or name not in pb:
            rows.append((name, "(stage)", "present" if name in pa else "—", "present" if name in pb else "—"))
            continue
        for key in list(pa[name]) + [k for k in pb[name] if k not in pa[name]]:
            x, y = pa[name].get(key, "—"), pb[name].get(key, "—")
            if x != y:
                rows.append((name, key, x, y))
    return rows


def recipe_diff(a: RunReport, b: RunReport, labels: tuple[str, str]) -> str:
    rows = [[esc(stage), esc(key), esc(x), esc(y)] for stage, key, x, y in recipe_differences(a, b)]
    if not rows:
        return '<p class="muted">the two recipes resolve to the same stages and parameters</p>'
    return table(["stage", "parameter", labels[0], labels[1]], rows, "diff")
