"""`recipe report`: one self-contained HTML page of what a recipe built (the
recipe, a stage timeline, the lineage graph, training curves, data funnels,
eval / judge / quantization tables, samples), or two runs compared.

:func:`collect_run` / :func:`collect_recipe` gather a run directory into a
:class:`RunReport`; :func:`render_report` / :func:`render_comparison` turn
reports into the page.  Nothing here imports torch."""

from __future__ import annotations

from .collect import ReportError, RunReport, collect_recipe, collect_run
from .html import render_comparison, render_report

__all__ = ["ReportError", "RunReport", "collect_recipe", "collect_run", "render_comparison", "render_report"]
