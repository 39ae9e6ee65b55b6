"""The Arrow file one source shard is written to, and its counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recipe_runner import StageError

from .specs import SourceOptions

WRITE_BATCH_DOCS = 1000
WRITE_BATCH_CHARS = 32 * 2**20

#: the counts a source shard keeps in its meta (and the stage sums into its metrics)
COUNTERS = (
    "files",
    "skipped_undecodable_files",
    "skipped_empty_files",
    "skipped_empty_documents",
    "skipped_long_documents",
)


def new_counts() -> dict[str, Any]:
    """Zero for every counter of :data:`COUNTERS`."""
    return dict.fromkeys(COUNTERS, 0)


class DocumentWriter:
    """Buffers documents and writes them to one Arrow file in batches.

    Columns: ``text``, ``source`` and the kept columns, whose features are
    set (by :meth:`keep`) from the first structured data read."""

    def __init__(self, path: Path, source: str, keep_columns: list[str]):
        self.path = path
        self.source = source
        self.keep_columns = keep_columns
        self.extra: Any = None  # Features of the kept columns, once known
        self.w: Any = None
        self.buf: list[str] = []
        self.extra_buf: dict[str, list[Any]] = {c: [] for c in keep_columns}
        self.chars = 0
        self.rows = 0
        self.total_chars = 0

    def keep(self, features: Any, what: str) -> None:
        """The kept columns' features, from data ``what`` holding them."""
        from datasets import Features

        missing = [c for c in self.keep_columns if c not in features]
        if missing:
            raise StageError(
                f"source {self.source!r}: {what} has no column(s) {missing} named in keep_columns "
                f"(its columns: {list(features)})"
            )
        extra = Features({c: features[c] for c in self.keep_columns})
        if self.extra is not None and extra != self.extra:
            raise StageError(
                f"source {self.source!r}: the kept columns of {what} have other types ({extra}) than "
                f"in the files read before ({self.extra})"
            )
        self.extra = extra

    def add(self, texts: list[str], extras: dict[str, list[Any]] | None = None) -> None:
        """Append documents (and their kept columns' values), written in batches."""
        for i, t in enumerate(texts):
            self.buf.append(t)
            for c in self.keep_columns:
                self.extra_buf[c].append(extras[c][i] if extras else None)
            self.chars += len(t)
            if len(self.buf) >= WRITE_BATCH_DOCS or self.chars >= WRITE_BATCH_CHARS:
                self.flush()

    def add_table(self, texts: Any, extras: dict[str, Any] | None = None) -> None:
        """Append a pyarrow string array of documents (and arrays of the kept columns)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        self.flush()
        n = len(texts)
        if n:
            cols = {"text": texts, "source": pa.array([self.source] * n, pa.string()), **(extras or {})}
            self._writer().write_table(pa.table(cols))
            self.rows += n
            self.total_chars += int(pc.sum(pc.utf8_length(texts)).as_py() or 0)

    def flush(self) -> None:
        if self.buf:
            self._writer().write_batch({"text": self.buf, "source": [self.source] * len(self.buf), **self.extra_buf})
            self.rows += len(self.buf)
            self.total_chars += self.chars
            self.buf, self.chars = [], 0
            self.extra_buf = {c: [] for c in self.keep_columns}

    def close(self) -> None:
        self.flush()
        w = self._writer() if not self.keep_columns or self.extra is not None or self.rows else None
        if w is None:  # kept columns of unknown type and nothing read: an empty file of the base columns
            self.keep_columns = []
            w = self._writer()
        w.finalize()
        w.close()

    def _writer(self) -> Any:
        if self.w is None:
            from datasets import Features, Value
            from datasets.arrow_writer import ArrowWriter

            if self.keep_columns and self.extra is None:
                raise StageError(
                    f"source {self.source!r}: keep_columns applies to JSON/Parquet/CSV/hub data, "
                    "and this source has text files"
                )
            features = Features({"text": Value("string"), "source": Value("string"), **(self.extra or {})})
            self.w = ArrowWriter(features=features, path=str(self.path))
        return self.w


def write_columnar(ds: Any, spec: SourceOptions, writer: DocumentWriter, stats: dict[str, Any], what: str) -> None:
    """Write the text column (and the kept columns) of a Dataset read from
    structured files or the hub (or of an IterableDataset streaming them),
    in Arrow batches; empty, null and too long texts are counted in ``stats``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import IterableDataset

    col = spec.text_column
    names = ds.column_names or list(ds.features or [])
    if not names and isinstance(ds, IterableDataset):  # features unresolved: the first row says (or fails to parse)
        first = next(iter(ds.with_format("arrow").iter(batch_size=1)), None)
        names = first.column_names if first is not None else []
    if col not in names:
        raise StageError(
            f"source {writer.source!r}: {what} has no column {col!r} (columns: {names}); "
            "set 'text_column' to the column holding the text"
        )
    kept = spec.keep_columns
    if kept:
        writer.keep(ds.features or {}, what)
    columns = [col, *[c for c in kept if c != col]]
    if isinstance(ds, IterableDataset):  # streamed: its format takes no columns
        batches = ds.select_columns(columns).with_format("arrow").iter(batch_size=10_000)
    else:
        batches = ds.with_format("arrow", columns=columns).iter(batch_size=10_000)
    for batch in batches:
        arr = batch.column(col).combine_chunks()
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            raise StageError(f"source {writer.source!r}: column {col!r} of {what} holds {arr.type}, not text")
        arr = arr.cast(pa.string())
        extras = {c: batch.column(c).combine_chunks() for c in kept}
        keep = pc.and_(pc.is_valid(arr), pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(arr.fill_null(""))), 0))
        n_valid = int(pc.sum(keep).as_py() or 0)
        if spec.max_chars is not None:
            keep = pc.and_(keep, pc.less_equal(pc.utf8_length(arr.fill_null("")), spec.max_chars))
            stats["skipped_long_documents"] += n_valid - int(pc.sum(keep).as_py() or 0)
        stats["skipped_empty_documents"] += len(arr) - n_valid
        writer.add_table(pc.filter(arr, keep), {c: pc.filter(a, keep) for c, a in extras.items()})
