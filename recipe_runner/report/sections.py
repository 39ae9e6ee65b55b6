"""The HTML sections of a report, each a function of the collected data
returning a fragment.  Every text that comes from a run (names, metrics,
samples, recipe text) goes through :func:`esc`."""

from __future__ import annotations

from html import escape
from typing import Any

from .collect import BeforeAfter, EvalResult, Funnel, RunReport, Sample, StageView

#: metrics too long or too structured for a table cell
LONG_VALUE = 120


def esc(value: Any) -> str:
    return escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A value as a table shows it: ints with thousands separators, floats
    with 4 decimals (4 significant digits when very large or small)."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4f}"
        return f"{value:.4g}"
    return str(value)


def table(headers: list[str], rows: list[list[str]], css: str = "") -> str:
    """A table of cells that are HTML already (escape them first)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def num(value: Any) -> str:
    return f'<span class="num">{esc(fmt(value))}</span>'


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics that fit a table cell."""
    return {
        k: v
        for k, v in metrics.items()
        if isinstance(v, (int, float, str, bool)) and (not isinstance(v, str) or len(v) <= LONG_VALUE)
    }


def status_badge(stage: StageView) -> str:
    status = "cached" if stage.cached and stage.status == "done" else stage.status
    label = {"done": "ran", "cached": "cached"}.get(status, status)
    return f'<span class="badge {esc(status)}">{esc(label)}</span>'


# ------------------------------------------------------------------ stages and timeline


def timeline(report: RunReport) -> str:
    """Each stage's build time as a bar on one time axis: solid where this run
    built it, hatched where it reused an output built earlier."""
    total = sum(s.seconds or 0.0 for s in report.stages) or 1.0
    rows, offset = [], 0.0
    for s in report.stages:
        rows.append(_timeline_row(s, offset, total))
        offset += s.seconds or 0.0
    ran = [s for s in report.stages if s.status == "done" and not s.cached]
    reused = [s for s in report.stages if s.status == "done" and s.cached]
    note = (
        f"{len(ran)} stage(s) built in this run ({sum(s.seconds or 0 for s in ran):.1f} s), "
        f"{len(reused)} reused from the cache (built earlier in {sum(s.seconds or 0 for s in reused):.1f} s)"
    )
    headers = ["stage", "status", "time", "seconds", "why"]
    return f'<p class="muted">{esc(note)}</p>' + table(headers, rows, "timeline")


def _timeline_row(s: StageView, offset: float, total: float) -> list[str]:
    took = f"{s.seconds:.1f} s" if s.seconds is not None else "—"
    kind = "cached" if s.cached else ("failed" if s.status in ("failed", "interrupted") else "ran")
    bar = ""
    if s.seconds is not None:
        left, width = 100 * offset / total, max(100 * s.seconds / total, 0.3)
        style = f"left:{left:.2f}%;width:{width:.2f}%"
        bar = f'<div class="bar {kind}" style="{style}" title="{esc(s.name)}: {esc(took)}"></div>'
    name = f'<span class="stage-name" title="{esc(s.reason)}">{esc(s.name)}</span>'
    return [
        f'{name}<span class="muted"> {esc(s.type)}</span>',
        status_badge(s),
        f'<div class="track">{bar}</div>',
        f'<span class="num">{esc(took)}</span>',
        _why(s),
    ]


def _why(s: StageView) -> str:
    """The error of a failed stage, else why it ran (left out when it only ran
    after its inputs: the reason is upstream's; the full text is the name's
    tooltip), and whether the recipe has changed it since."""
    if s.error:
        return f'<span class="error small">{esc(s.error)}</span>'
    shown = "" if s.reason.startswith("after ") else s.reason
    changed = '<span class="changed small">changed in the recipe since this run</span> ' if s.changed else ""
    return f'{changed}<span class="muted small">{esc(shown)}</span>'


# ------------------------------------------------------------------ data funnels


def funnel_chart(items: list[Funnel]) -> str:
    """Per data stage: the documents it read, then what each of its filters
    removed (with the reasons), bars on one scale across the run."""
    if not items:
        return '<p class="muted">no data stage reported document counts</p>'
    widest = max(f.documents_in for f in items) or 1
    rows = []
    for f in items:
        read = len(f.steps) == 1 and f.steps[0].label == "read"  # a source: documents per source
        detail = f.steps[0].detail if read else {}
        rows.append(_funnel_row(f.stage, f"{f.type}: {'read' if read else 'in'}", f.documents_in, None, widest, detail))
        for step in [] if read else f.steps:
            rows.append(_funnel_row("", step.label, step.documents, step.removed, widest, step.detail))
    head = "".join(f"<div class='fhead'>{h}</div>" for h in ("stage", "step", "documents", "", "removed by reason"))
    return f'<div class="funnel">{head}{"".join(rows)}</div>'


def _funnel_row(stage: str, label: str, docs: int, removed: int | None, widest: int, detail: dict[str, int]) -> str:
    css = "frow first" if stage else "frow"
    gone = "" if removed is None else f' <span class="{"removed" if removed else "muted"}">−{removed:,}</span>'
    why = ", ".join(f"{k}: {v:,}" for k, v in detail.items())
    return (
        f'<div class="{css}"><div class="fstage">{esc(stage)}</div><div class="flabel">{esc(label)}</div>'
        f'<div><div class="ftrack"><div class="fbar" style="width:{100 * docs / widest:.2f}%"></div></div></div>'
        f'<div class="fcount">{docs:,}{gone}</div><div class="fdetail muted small">{esc(why)}</div></div>'
    )


# ------------------------------------------------------------------ evaluation, before/after, samples


def eval_tables(items: list[EvalResult]) -> str:
    if not items:
        return '<p class="muted">no eval report in this run</p>'
    parts = []
    for e in items:
        rows = [[esc(k), num(v) + _stderr(e.stderr.get(k))] for k, v in scalar_metrics(e.metrics).items()]
        parts.append(f'<div class="card"><h3>{esc(e.stage)}</h3>{table(["metric", "value"], rows, "metrics")}')
        if e.judge_metrics:
            jrows = [[esc(k), num(v)] for k, v in scalar_metrics(e.judge_metrics).items()]
            parts.append(f"<h4>LLM judge</h4>{table(['metric', 'value'], jrows, 'metrics')}")
        if e.judge_rows:
            parts.append(judge_table(e))
        parts.append("</div>")
    return f'<div class="cards">{"".join(parts)}</div>'


def _stderr(value: Any) -> str:
    return f' <span class="muted small">± {esc(fmt(value))}</span>' if isinstance(value, (int, float)) else ""


def judge_table(e: EvalResult) -> str:
    keys: list[str] = []
    for row in e.judge_rows:
        keys += [k for k in row if k not in keys]
    rows = [[f'<div class="text">{esc(fmt(r.get(k, "")))}</div>' for k in keys] for r in e.judge_rows]
    more = (
        f"first {len(e.judge_rows)} of {e.judge_rows_total} verdicts" if e.judge_rows_total > len(e.judge_rows) else ""
    )
    return f"<h4>Judge verdicts</h4><p class='muted small'>{esc(more)}</p>" + table(keys, rows, "texts")


def before_after_tables(items: list[BeforeAfter]) -> str:
    if not items:
        return '<p class="muted">no stage measured before / after (quantization, reward)</p>'
    parts = []
    for b in items:
        rows = [[esc(q), num(x), num(y), change(x, y)] for q, x, y in b.rows]
        facts = " · ".join(f"{k} {fmt(v)}" for k, v in b.facts.items())
        parts.append(
            f'<div class="card"><h3>{esc(b.stage)} <span class="muted">({esc(b.type)})</span></h3>'
            f"{table(['quantity', 'before', 'after', 'change'], rows, 'metrics')}"
            f'<p class="muted small">{esc(facts)}</p></div>'
        )
    return f'<div class="cards">{"".join(parts)}</div>'


def change(before: float, after: float, better: int = 0) -> str:
    """``after - before`` and the change in percent, as a table cell; coloured
    when ``better`` says which way is an improvement (+1 up, -1 down)."""
    delta = after - before
    if delta == 0:
        return '<span class="muted">same</span>'
    pct = f" ({100 * delta / before:+.2f}%)" if before else ""
    shown = f"{delta:+,}" if isinstance(delta, int) else f"{delta:+.4g}"
    verdict = better * (1 if delta > 0 else -1)
    css = "better" if verdict > 0 else "worse" if verdict < 0 else ""
    return f'<span class="num {css}">{esc(shown)}{esc(pct)}</span>'


def sample_table(items: list[Sample]) -> str:
    """Each sample's texts in boxes (the prompt across the row), its short
    fields (a sample number, a score) as tags under the stage name."""
    if not items:
        return '<p class="muted">no samples</p>'
    rows = []
    for s in items:
        short = {k: v for k, v in s.fields.items() if k != "prompt" and len(v) <= 24 and "\n" not in v}
        texts = {k: v for k, v in s.fields.items() if k not in short}
        columns = max(1, len([k for k in texts if k != "prompt"]))  # before / after: next to each other
        boxes = "".join(
            f'<div class="field{" wide" if k == "prompt" else ""}"><div class="key">{esc(k)}</div>'
            f'<pre class="text">{esc(v)}</pre></div>'
            for k, v in texts.items()
        )
        tags = "".join(f'<div class="tag">{esc(k)} {esc(v)}</div>' for k, v in short.items())
        rows.append(
            [
                f'<span class="stage-name">{esc(s.stage)}</span>{tags}',
                f'<div class="fields" style="grid-template-columns:repeat({columns},minmax(0,1fr))">{boxes}</div>',
            ]
        )
    return table(["stage", "sample"], rows, "samples")


# ------------------------------------------------------------------ every stage's metrics, the recipe


def stage_metrics(report: RunReport) -> str:
    parts = []
    for s in report.stages:
        shown = scalar_metrics(s.metrics)
        if not shown:
            continue
        rows = [[esc(k), num(v) if not isinstance(v, str) else esc(v)] for k, v in shown.items()]
        parts.append(
            f"<details><summary><b>{esc(s.name)}</b> <span class='muted'>{esc(s.type)} · {len(shown)} metrics</span>"
            f"</summary>{table(['metric', 'value'], rows, 'metrics')}</details>"
        )
    return "".join(parts) or '<p class="muted">no metrics</p>'


def recipe_section(report: RunReport) -> str:
    import yaml

    r = report.recipe
    resolved = yaml.safe_dump(r.resolved, sort_keys=False, allow_unicode=True, width=110)
    versions = " · ".join(f"{k} {v}" for k, v in report.versions.items())
    return (
        f'<p class="muted small">{esc(r.file)}</p><pre class="code">{esc(r.text)}</pre>'
        f"<details><summary>resolved: every stage's parameters, defaults included</summary>"
        f'<pre class="code">{esc(resolved)}</pre></details>'
        f'<p class="muted small">versions: {esc(versions)}</p>'
    )
