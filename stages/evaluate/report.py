"""The eval stage's report: ``report.json`` (every section and the flat
metrics), ``report.md`` and a plain-text table of the metrics for the log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def render_table(rows: list[tuple[str, str]], title: str) -> str:
    """A plain-text table (rich) of metric name -> value."""
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    buf = StringIO()
    Console(file=buf, width=100, force_terminal=False, color_system=None).print(table)
    return buf.getvalue()


def format_value(value: Any) -> str:
    """A metric as the table shows it: floats with 4 decimals (4 significant
    digits when large), everything else as is."""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.4g}"
    return str(value)


def metrics_table(metrics: dict[str, Any], title: str) -> str:
    """The table of ``metrics`` (stderr values left out); '' when there are none."""
    rows = [(k, format_value(v)) for k, v in metrics.items() if not k.endswith("_stderr")]
    return render_table(rows, title) if rows else ""


def write_report(out: Path, report: dict[str, Any], table: str, model_dir: Path) -> None:
    """``report.json`` and ``report.md`` (the table and the sample generations) in ``out``."""
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    md = ["# Evaluation report", "", f"model: `{model_dir}`", "", "```", table.rstrip(), "```"]
    for s in report.get("samples", []):
        md += ["", f"**{s['prompt']}** {s['completion']}"]
    (out / "report.md").write_text("\n".join(md) + "\n")
