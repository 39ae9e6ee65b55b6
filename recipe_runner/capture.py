"""A quiet console: while a stage runs, everything libraries print (warnings,
per-request spam, C-level messages, worker processes' output) goes to the
stage's log file instead of the terminal, and one summary line says how much
went there and what repeated most.

This works on file descriptors 1 and 2, so it also catches output that never
passes through Python's ``logging`` or ``sys.stderr``; the console itself
writes to private copies of them (:func:`recipe_runner.console.detach`)."""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_NUMBER = re.compile(r"\d+(\.\d+)?")


@contextmanager
def library_output_to(log_file: Path) -> Iterator[list[str]]:
    """Send fds 1 and 2 to ``log_file`` (appending); the yielded list receives,
    on exit, the lines captured."""
    captured: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    start = log_file.stat().st_size if log_file.exists() else 0
    saved = os.dup(1), os.dup(2)
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield captured
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)
        with open(log_file, "rb") as fh:
            fh.seek(start)
            captured.extend(fh.read().decode("utf-8", "replace").splitlines())


def summarize(lines: list[str], own_prefix: str) -> str | None:
    """``N lines of library output (most often: K x 'line')``, leaving out the
    stage's own log lines (they are on the console already)."""
    foreign = [line for line in lines if line.strip() and own_prefix not in line]
    if not foreign:
        return None
    shape, count = Counter(_NUMBER.sub("#", line.strip())[:100] for line in foreign).most_common(1)[0]
    summary = f"{len(foreign)} lines of library output"
    if count > 1:
        summary += f" (most often, {count} x: {shape!r})"
    return summary
