"""Terminal output: rich progress bars and tables on a terminal, plain log
lines otherwise (CI logs, pipes)."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .redaction import RedactSecrets
from .stage import Progress, ProgressSink

console = Console(stderr=True)
stdout = Console()


def is_tty() -> bool:
    return console.is_terminal


def redact_logs(secrets: frozenset[str]) -> None:
    """Redact these values in everything the console handlers print."""
    if secrets:
        for h in logging.getLogger("recipe_runner").handlers:
            h.addFilter(RedactSecrets(secrets))


def detach() -> None:
    """Point the console (rich and the log handler) at private copies of the
    terminal's file descriptors, so the runner can send fds 1 and 2 to a
    stage's log file while the stage runs (recipe_runner.capture)."""
    global stdout
    err = os.fdopen(os.dup(2), "w", buffering=1)
    console.file = err
    stdout = Console(file=os.fdopen(os.dup(1), "w", buffering=1))
    for h in logging.getLogger("recipe_runner").handlers:
        if isinstance(h, logging.StreamHandler) and h.stream in (sys.stderr, sys.__stderr__):
            h.setStream(err)


def setup_logging(verbose: bool = False) -> None:
    """Console logging: INFO, or DEBUG with -v (stage tracebacks are logged at
    DEBUG: always in the stage's log file, on the console only with -v)."""
    root = logging.getLogger("recipe_runner")
    root.setLevel(logging.DEBUG)
    root.propagate = False
    for h in list(root.handlers):
        root.removeHandler(h)
    if is_tty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=console, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.addHandler(handler)


class RichProgressSink(ProgressSink):
    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RP

        self.rp = RP(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.tasks: dict[int, Any] = {}
        self.active = 0

    def start(self, p: Progress) -> None:
        if self.active == 0:
            self.rp.start()
        self.active += 1
        self.tasks[id(p)] = self.rp.add_task(p.description, total=p.total)

    def update(self, p: Progress) -> None:
        if id(p) in self.tasks:
            self.rp.update(self.tasks[id(p)], completed=p.completed)

    def stop(self, p: Progress) -> None:
        task = self.tasks.pop(id(p), None)
        if task is not None:
            self.rp.remove_task(task)
        self.active -= 1
        if self.active == 0:
            self.rp.stop()


class LogProgressSink(ProgressSink):
    """Plain lines, at most one every ``every`` seconds per bar."""

    def __init__(self, every: float = 15.0) -> None:
        self.every = every
        self.last: dict[int, float] = {}
        self.log = logging.getLogger("recipe_runner.progress")

    def _line(self, p: Progress) -> None:
        total = f"/{p.total:g}" if p.total else ""
        self.log.info("%s: %g%s", p.description, p.completed, total)

    def start(self, p: Progress) -> None:
        self.last[id(p)] = time.monotonic()

    def update(self, p: Progress) -> None:
        now = time.monotonic()
        if now - self.last.get(id(p), 0) >= self.every:
            self.last[id(p)] = now
            self._line(p)

    def stop(self, p: Progress) -> None:
        self.last.pop(id(p), None)  # the stage's "done" line says the rest


def progress_sink() -> ProgressSink:
    return RichProgressSink() if is_tty() else LogProgressSink()


def format_metrics(metrics: dict[str, Any], width: int = 1000, limit: int = 4) -> str:
    """Whole ``key=value`` items that fit in ``width`` characters (never a number cut in two)."""
    out = ""
    for n, (k, v) in enumerate(metrics.items()):
        if n >= limit and out:
            break
        if isinstance(v, float):
            item = f"{k}={v:.4g}"
        elif isinstance(v, int | str) and len(str(v)) < 30:
            item = f"{k}={v}"
        else:
            continue
        candidate = f"{out} {item}" if out else item
        if len(candidate) > width:
            break
        out = candidate
    return out


def summary_table(manifest: dict[str, Any], title: str, width: int = 80) -> Table:
    """One line per stage, fitting ``width`` columns: the first metrics that fit whole."""
    stages = manifest["stages"]
    name_w = min(18, max([5, *(len(e["name"]) for e in stages)]))
    type_w = min(9, max([4, *(len(e["type"]) for e in stages)]))
    metrics_w = max(12, width - name_w - type_w - 11 - 7 - 9)  # status 11, seconds 7, gaps
    t = Table(title=title, box=None, pad_edge=False)
    t.add_column("stage", no_wrap=True, overflow="ellipsis", max_width=name_w)
    t.add_column("type", no_wrap=True, overflow="ellipsis", max_width=type_w)
    t.add_column("status", no_wrap=True)
    t.add_column("s", no_wrap=True, justify="right")
    t.add_column("metrics", no_wrap=True, overflow="ellipsis", max_width=metrics_w)
    style = {"done": "green", "failed": "red", "running": "yellow", "pending": "dim", "interrupted": "red"}
    for e in stages:
        status = "cached" if e.get("cached") and e["status"] == "done" else e["status"]
        secs = "" if e.get("seconds") is None else f"{e['seconds']:.1f}"
        detail = e.get("error") or format_metrics(e.get("metrics") or {}, width=metrics_w)
        t.add_row(e["name"], e["type"], f"[{style.get(e['status'], '')}]{status}[/]", secs, Text(detail))
    return t
