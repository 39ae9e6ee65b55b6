"""Packing a stream of token batches into rows of a fixed length, with a
carry of the unfinished tail between batches (and shards): the course's
concatenate-and-reshape (``concat``), the same rows with per-document
positions and labels (``document``), and sliding windows (``sliding``)."""

from __future__ import annotations

from typing import Any


class RowStreamer:
    """Concat / document / sliding packing over a stream of token batches.

    ``carry`` / ``carry_starts``: the tokens (and document-start flags) left
    over by the previous shard; ``skip``: tokens a stride longer than the row
    still has to pass over."""

    def __init__(self, mode: str, length: int, stride: int, carry: Any = None, carry_starts: Any = None, skip: int = 0):
        import numpy as np

        self.mode, self.length, self.stride, self.skip = mode, length, stride, skip
        self.carry = np.zeros(0, np.int32) if carry is None else carry
        self.carry_starts = np.zeros(0, bool) if carry_starts is None else carry_starts

    def push(self, flat: Any, lengths: Any) -> dict[str, Any] | None:
        """Add one batch (flat token ids, per-document lengths); return the
        finished rows' columns, or None when no row is finished yet."""
        import numpy as np

        starts = np.zeros(len(flat), dtype=bool)
        nz = lengths[lengths > 0]
        if len(nz):
            starts[np.concatenate(([0], np.cumsum(nz)[:-1]))] = True
        buf = np.concatenate((self.carry, flat)) if len(self.carry) else flat
        flags = np.concatenate((self.carry_starts, starts)) if len(self.carry_starts) else starts
        if self.mode == "sliding":
            return self._windows(buf, flags)
        return self._rows(buf, flags)

    def _rows(self, buf: Any, flags: Any) -> dict[str, Any] | None:
        """Consecutive rows of ``length`` tokens; the remainder is carried."""
        n = len(buf) // self.length
        cut = n * self.length
        rows = buf[:cut].reshape(n, self.length)
        out = {"input_ids": rows}
        if self.mode == "document" and n:
            out.update(document_columns(rows, flags[:cut].reshape(n, self.length)))
        self.carry, self.carry_starts = buf[cut:].copy(), flags[cut:].copy()
        return out if n else None

    def _windows(self, buf: Any, flags: Any) -> dict[str, Any] | None:
        """Windows of ``length`` tokens every ``stride`` tokens; the tokens a
        later window still needs are carried."""
        import numpy as np

        if self.skip:  # a stride longer than the row skips tokens past the end of the last batch
            k = min(self.skip, len(buf))
            buf, flags, self.skip = buf[k:], flags[k:], self.skip - k
        if len(buf) < self.length:
            self.carry, self.carry_starts = buf, flags
            return None
        n = (len(buf) - self.length) // self.stride + 1
        view = np.lib.stride_tricks.sliding_window_view(buf, self.length)[:: self.stride][:n]
        nxt = n * self.stride
        self.skip = max(0, nxt - len(buf))
        self.carry, self.carry_starts = buf[nxt:].copy(), flags[nxt:].copy()
        return {"input_ids": np.ascontiguousarray(view)}


def document_columns(rows: Any, starts: Any) -> dict[str, Any]:
    """position_ids restarting at each document start and at each row start;
    labels = input_ids with -100 on document starts."""
    import numpy as np

    n, length = rows.shape
    col = np.broadcast_to(np.arange(length, dtype=np.int32), (n, length))
    marker = starts.copy()
    marker[:, 0] = True
    last = np.maximum.accumulate(np.where(marker, col, 0), axis=1)
    pos = (col - last).astype(np.int32)
    labels = rows.astype(np.int32, copy=True)
    labels[starts] = -100
    return {"position_ids": pos, "labels": labels}
