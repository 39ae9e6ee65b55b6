"""What rank 0 of a distributed stage tells the orchestrating process while it
runs: its log records, its progress bars and its tracker points, as JSON lines
appended to one file in the stage's temporary directory; the orchestrator
reads the new lines as they come and replays them on its console, its stage
log and its tracker run, so a launched stage looks like one run in-process."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from .stage import Progress, ProgressSink


class EventWriter:
    """Rank 0's side: one JSON object per line, flushed at once."""

    def __init__(self, path: Path):
        self._fh: TextIO = path.open("a", encoding="utf-8")

    def emit(self, kind: str, **data: Any) -> None:
        self._fh.write(json.dumps({"kind": kind, **data}, default=str) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class EventLogHandler(logging.Handler):
    def __init__(self, writer: EventWriter):
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        self.writer.emit("log", level=record.levelno, msg=record.getMessage())


class EventProgressSink(ProgressSink):
    """Progress of rank 0's bars; updates at most every ``every`` seconds a bar."""

    def __init__(self, writer: EventWriter, every: float = 0.25):
        self.writer, self.every = writer, every
        self.last: dict[int, float] = {}

    def start(self, progress: Progress) -> None:
        self.last[id(progress)] = time.monotonic()
        self.writer.emit("start", id=id(progress), description=progress.description, total=progress.total)

    def update(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self.last.get(id(progress), 0.0) >= self.every:
            self.last[id(progress)] = now
            self.writer.emit("update", id=id(progress), completed=progress.completed)

    def stop(self, progress: Progress) -> None:
        self.last.pop(id(progress), None)
        self.writer.emit("stop", id=id(progress), completed=progress.completed)


class EventTracker:
    """Stands in for the tracker run on rank 0: ``ctx.track`` points go to the orchestrator."""

    def __init__(self, writer: EventWriter):
        self.writer = writer

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.writer.emit("track", step=step, metrics=dict(metrics))

    def finish(self, metrics: Mapping[str, Any]) -> None:
        pass  # the orchestrator finishes the real run with the committed metrics


class EventReplay:
    """The orchestrator's side: reads the lines appended since the last call."""

    def __init__(self, path: Path, log: logging.Logger, sink: ProgressSink | None, tracker: Any):
        self.path, self.log, self.sink, self.tracker = path, log, sink, tracker
        self.offset = 0
        self.bars: dict[int, Progress] = {}

    def pump(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next call
        self.offset += end
        for line in chunk[:end].decode("utf-8", "replace").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            self._replay(event)

    def _replay(self, e: dict[str, Any]) -> None:
        kind = e.get("kind")
        if kind == "log":
            self.log.log(int(e.get("level", logging.INFO)), "%s", e.get("msg", ""))
        elif kind == "track" and self.tracker is not None:
            self.tracker.log(int(e["step"]), e.get("metrics", {}))
        elif kind in ("start", "update", "stop") and self.sink is not None:
            self._bar(kind, e)

    def _bar(self, kind: str, e: dict[str, Any]) -> None:
        assert self.sink is not None
        if kind == "start":
            bar = self.bars[e["id"]] = Progress(None, str(e.get("description", "")), e.get("total"))
            self.sink.start(bar)
            return
        bar = self.bars.get(e["id"]) or Progress(None, "", None)
        bar.completed = float(e.get("completed", 0.0))
        self.sink.update(bar)
        if kind == "stop" and self.bars.pop(e["id"], None) is not None:
            self.sink.stop(bar)

    def close(self) -> None:
        """Stop the bars rank 0 left open (it died)."""
        self.pump()
        for bar in self.bars.values():
            if self.sink is not None:
                self.sink.stop(bar)
        self.bars.clear()
