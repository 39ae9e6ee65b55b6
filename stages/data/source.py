"""``source``: read documents from local files or the Hugging Face hub, mix
several sources by counts or weights, and split off a seeded validation set.

Output: a ``dataset`` artifact (DatasetDict with "train" and, when asked,
"validation"; columns "text", "source" and any ``keep_columns``).
"""
from __future__ import annotations

import fnmatch
import glob as globlib
import gzip
import re
import shutil
import zlib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from recipe_runner.artifacts import DATASET, Artifact
from recipe_runner.stage import Params, Stage, StageContext, StageError

from ._util import (
    ShardStore, kept_rows, load_arrow, order_metrics, save_dataset_dict, save_streamed, with_quiet_datasets,
)

FILES_PER_SHARD = 500
WRITE_BATCH_DOCS = 1000
WRITE_BATCH_CHARS = 32 * 2**20

_FORMAT_BY_SUFFIX = {
    ".jsonl": "json", ".json": "json", ".ndjson": "json",
    ".parquet": "parquet", ".pq": "parquet",
    ".csv": "csv", ".tsv": "csv",
}


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None, description="Label stored in the 'source' column and used in metrics (default: from the path or dataset name).")
    text_column: str = Field(
        "text", description="Column holding the text in JSON/Parquet/CSV/hub data; it is renamed to 'text'.")
    max_chars: int | None = Field(
        None, ge=1,
        description="Skip (and count in the metric 'skipped_long_documents') documents longer than this many characters.")
    count: int | None = Field(
        None, ge=0,
        description=("Take exactly this many documents from this source (a seeded sample without replacement; "
                     "a count above the number available repeats the source: whole passes plus a seeded sample)."))
    weight: float | None = Field(
        None, gt=0,
        description=("Mixing weight: the source's share of the stage's 'total' documents. Either every source has a "
                     "weight or none has; weights and counts are not mixed."))
    keep_columns: list[str] = Field(
        default_factory=list,
        description=("Columns of JSON/Parquet/CSV/hub data kept next to 'text' and 'source' with their types (e.g. "
                     "['url', 'id']); later stages carry them along. Where sources are mixed, a source without one "
                     "of the kept columns gets nulls."))

    @field_validator("keep_columns")
    @classmethod
    def _check_keep(cls, v: list[str]) -> list[str]:
        reserved = {"text", "source"} & set(v)
        if reserved:
            raise ValueError(f"{sorted(reserved)} cannot be kept: 'text' and 'source' are the stage's own columns "
                             "(the text column is chosen with 'text_column')")
        if len(set(v)) != len(v):
            raise ValueError("keep_columns lists a column twice")
        return v


class FilesSource(_Spec):
    """Local files: one document per file (e.g. source code) or several per file."""

    type: Literal["files"] = Field("files", description="'files' (the default when 'path' is given).")
    path: Union[str, list[str]] = Field(
        ..., description=("A file, a directory (combined with 'glob') or a glob pattern (e.g. 'data/**/*.jsonl'); "
                          "or a list of them. Matches are read in sorted order."))
    glob: str | None = Field(
        None, description="Pattern applied inside each directory in 'path', e.g. '**/*.py' (default: every file).")
    exclude: list[str] = Field(
        default_factory=list,
        description="Glob patterns (matched against the path relative to its directory and the full path) of files to leave out, e.g. ['test/**', 'site-packages/**'].")
    format: Literal["auto", "text", "json", "parquet", "csv"] = Field(
        "auto", description=("How to read the files. 'auto' goes by the extension (a trailing '.gz' is looked through): "
                             ".jsonl/.json/.ndjson -> json, .parquet -> parquet, .csv/.tsv -> csv, anything else -> text "
                             "(plain text and source code)."))
    split_by: Literal["file", "blank_lines", "lines", "separator", "regex"] = Field(
        "file", description=("How text files are cut into documents: 'file' (the whole file is one document, as for "
                             "source code), 'blank_lines' (paragraphs), 'lines', 'separator' (a literal string) or "
                             "'regex' (a regular expression), both given in 'separator'. Pieces are stripped of "
                             "surrounding blank lines and whitespace-only pieces are dropped."))
    separator: str | None = Field(None, description="The literal separator or the regular expression for split_by 'separator'/'regex'.")
    encoding: str = Field("utf-8", description="Text encoding of text files.")
    on_decode_error: Literal["skip", "error", "replace"] = Field(
        "skip", description=("A text file that does not decode (or a corrupt .gz): 'skip' it (logged, counted in the "
                             "metric 'skipped_undecodable_files'), stop with an 'error' naming the file, or 'replace' "
                             "the bad bytes with U+FFFD."))

    @model_validator(mode="after")
    def _check(self) -> "FilesSource":
        if self.split_by in ("separator", "regex") and not self.separator:
            raise ValueError(f"split_by {self.split_by!r} needs 'separator'")
        if self.split_by == "regex":
            try:
                re.compile(self.separator or "")
            except re.error as e:
                raise ValueError(f"invalid regular expression in 'separator': {e}") from e
        return self

    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)


class HubSource(_Spec):
    """A dataset on the Hugging Face hub (needs network access or a local cache)."""

    type: Literal["hub"] = Field("hub", description="'hub' (the default when 'dataset' is given).")
    dataset: str = Field(..., description="Hub dataset name, e.g. 'upstage/Pretraining_Dataset'.")
    subset: str | None = Field(None, description="Configuration (subset) name.")
    split: str = Field("train", description="Split to read.")
    revision: str | None = Field(None, description="Git revision (branch, tag or commit) of the dataset repo.")
    streaming: bool = Field(False, description="Stream instead of downloading the whole split (use with 'take').")
    take: int | None = Field(None, ge=1, description="Read only the first N rows.")


def _source_kind(v: Any) -> str:
    if isinstance(v, dict):
        return v.get("type") or ("hub" if "dataset" in v else "files")
    return getattr(v, "type", "files")


SourceSpec = Annotated[
    Union[Annotated[FilesSource, Tag("files")], Annotated[HubSource, Tag("hub")]],
    Discriminator(_source_kind),
]


class SourceParams(Params):
    sources: list[SourceSpec] = Field(
        ..., min_length=1,
        description=("The sources to read, each a mapping with 'type' 'files' (key 'path') or 'hub' (key 'dataset') "
                     "and the options listed under FilesSource / HubSource."))
    total: int | None = Field(
        None, ge=1,
        description=("Documents in the mix when the sources have weights (default: as many as the data allows "
                     "without repeating any source)."))
    shuffle: bool = Field(
        False, description="Shuffle the mixed documents (seeded); otherwise they keep the sources' order.")
    validation: float | int | None = Field(
        None,
        description=("Size of a validation split drawn at random (seeded) from the mix: a fraction in (0, 1) or a "
                     "number of documents. None: train only."))
    seed: int | None = Field(None, description="Seed for sampling, shuffling and the split (default: the recipe's seed).")

    @field_validator("validation")
    @classmethod
    def _check_validation(cls, v: Any) -> Any:
        if v is None:
            return v
        if isinstance(v, float) and not v.is_integer():
            if not 0 < v < 1:
                raise ValueError("a validation fraction must be between 0 and 1; a count must be a whole number")
            return v
        if int(v) < 1:
            raise ValueError("validation must be a fraction in (0, 1) or a count >= 1")
        return int(v)

    @model_validator(mode="after")
    def _check_mix(self) -> "SourceParams":
        weights = [s.weight is not None for s in self.sources]
        if any(weights):
            if not all(weights):
                raise ValueError("either every source has a 'weight' or none has")
            if any(s.count is not None for s in self.sources):
                raise ValueError("sources with weights cannot also have a 'count'")
        elif self.total is not None:
            raise ValueError("'total' applies to weighted sources; give each source a 'weight' (or use 'count')")
        return self


# ------------------------------------------------------------ file matching


def _has_magic(s: str) -> bool:
    return globlib.has_magic(s)


def _excluded(path: Path, base: Path | None, patterns: list[str]) -> bool:
    if not patterns:
        return False
    cands = [path.as_posix()]
    if base is not None:
        try:
            cands.append(path.relative_to(base).as_posix())
        except ValueError:
            pass
    for pat in patterns:
        for c in cands:
            if fnmatch.fnmatchcase(c, pat) or (pat.endswith("/**") and (c + "/").startswith(pat[:-2])):
                return True
            if pat.startswith("**/") and fnmatch.fnmatchcase(c, pat[3:]):
                return True
    return False


def match_files(spec: FilesSource) -> list[Path]:
    """The files a 'files' source reads, sorted and de-duplicated."""
    found: dict[str, Path] = {}
    for raw in spec.paths():
        p = Path(raw).expanduser()
        if _has_magic(raw):
            base = Path(raw.split("*")[0].split("?")[0].split("[")[0] or ".")
            base = base if base.is_dir() else base.parent
            hits = [Path(h) for h in globlib.glob(str(p), recursive=True)]
        elif p.is_dir():
            base = p
            pattern = spec.glob or "**/*"
            hits = list(p.glob(pattern))
        elif p.exists():
            base, hits = p.parent, [p]
        else:
            raise StageError(f"source {spec.name or raw!r}: {raw} does not exist")
        for h in hits:
            if h.is_file() and not _excluded(h, base, spec.exclude):
                found.setdefault(str(h), h)
    if not found:
        where = ", ".join(spec.paths()) + (f" (glob {spec.glob!r})" if spec.glob else "")
        raise StageError(f"source {spec.name or spec.paths()[0]!r}: no files match {where}")
    return [found[k] for k in sorted(found)]


def _file_format(spec: FilesSource, path: Path) -> str:
    if spec.format != "auto":
        return spec.format
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return _FORMAT_BY_SUFFIX.get(suffixes[-1] if suffixes else "", "text")


def _default_name(spec: Any, index: int) -> str:
    if spec.name:
        return spec.name
    if isinstance(spec, HubSource):
        return spec.dataset
    first = spec.paths()[0]
    if _has_magic(first):
        first = first.split("*")[0].rstrip("/") or "files"
    p = Path(first)
    name = p.name
    for suf in (".gz",) + tuple(_FORMAT_BY_SUFFIX) + (".txt",):
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
    return name or f"source{index}"


# ------------------------------------------------------------ text reading


def _read_bytes(path: Path) -> bytes:
    if path.suffix.lower() == ".gz":
        with gzip.open(path, "rb") as f:
            return f.read()
    return path.read_bytes()


_BLANK_LINES = re.compile(r"\n(?:[ \t\r\f\v]*\n)+")


def split_text(text: str, spec: FilesSource) -> list[str]:
    """Cut one file's text into documents as ``spec.split_by`` says."""
    if spec.split_by == "file":
        return [text] if text.strip() else []
    if spec.split_by == "blank_lines":
        pieces = _BLANK_LINES.split(text)
    elif spec.split_by == "lines":
        pieces = text.splitlines()
    elif spec.split_by == "separator":
        pieces = text.split(spec.separator or "")
    else:
        pieces = re.split(spec.separator or "", text)
    out = []
    for piece in pieces:
        if piece is None or not piece.strip():
            continue
        out.append(piece.strip("\r\n"))
    return out


class _Writer:
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
            raise StageError(f"source {self.source!r}: {what} has no column(s) {missing} named in keep_columns "
                             f"(its columns: {list(features)})")
        extra = Features({c: features[c] for c in self.keep_columns})
        if self.extra is not None and extra != self.extra:
            raise StageError(f"source {self.source!r}: the kept columns of {what} have other types ({extra}) than "
                             f"in the files read before ({self.extra})")
        self.extra = extra

    def _writer(self) -> Any:
        if self.w is None:
            from datasets import Features, Value
            from datasets.arrow_writer import ArrowWriter

            if self.keep_columns and self.extra is None:
                raise StageError(f"source {self.source!r}: keep_columns applies to JSON/Parquet/CSV/hub data, "
                                 "and this source has text files")
            features = Features({"text": Value("string"), "source": Value("string"), **(self.extra or {})})
            self.w = ArrowWriter(features=features, path=str(self.path))
        return self.w

    def add(self, texts: list[str], extras: dict[str, list[Any]] | None = None) -> None:
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


def _read_text_files(files: list[Path], spec: FilesSource, writer: _Writer, stats: dict[str, Any], log: Any) -> None:
    if spec.keep_columns:
        raise StageError(f"source {writer.source!r}: keep_columns applies to JSON/Parquet/CSV/hub data, and "
                         f"{files[0]} is read as text (set 'format' if it is structured data)")
    for path in files:
        try:
            raw = _read_bytes(path)
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # a corrupt .gz
            if spec.on_decode_error == "error":
                raise StageError(f"cannot decompress {path}: {e}") from e
            stats["skipped_undecodable_files"] += 1
            stats.setdefault("_skipped", []).append(str(path))
            continue
        except OSError as e:
            raise StageError(f"cannot read {path}: {e}") from e
        try:
            text = raw.decode(spec.encoding, errors="replace" if spec.on_decode_error == "replace" else "strict")
        except LookupError as e:
            raise StageError(f"source {writer.source!r}: unknown encoding {spec.encoding!r}") from e
        except UnicodeDecodeError as e:
            if spec.on_decode_error == "error":
                raise StageError(
                    f"{path} is not valid {spec.encoding} (byte {e.start}: {e.reason}); fix the file, set 'encoding', "
                    "or set on_decode_error to 'skip' or 'replace'") from e
            stats["skipped_undecodable_files"] += 1
            stats.setdefault("_skipped", []).append(str(path))
            continue
        if not text.strip():
            stats["skipped_empty_files"] += 1
            continue
        docs = split_text(text, spec)
        if spec.max_chars is not None:
            keep = [d for d in docs if len(d) <= spec.max_chars]
            stats["skipped_long_documents"] += len(docs) - len(keep)
            docs = keep
        stats["files"] += 1
        writer.add(docs)


def _read_structured(files: list[Path], fmt: str, spec: _Spec, writer: _Writer, stats: dict[str, Any],
                     scratch: Path, log: Any) -> None:
    import datasets

    plain: list[str] = []
    for i, f in enumerate(files):
        if f.suffix.lower() == ".gz":  # decompress once; every reader then sees a plain file
            target = scratch / f"gunzip-{i}-{f.name[:-3]}"
            try:
                with gzip.open(f, "rb") as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 16 * 2**20)
            except (OSError, EOFError) as e:
                raise StageError(f"cannot decompress {f}: {e}") from e
            plain.append(str(target))
        else:
            if f.stat().st_size == 0:
                stats["skipped_empty_files"] += 1
                continue
            plain.append(str(f))
    if not plain:
        return
    kwargs: dict[str, Any] = {}
    if fmt == "csv" and all(p.lower().endswith(".tsv") for p in plain):
        kwargs["sep"] = "\t"

    def load(paths: list[str]) -> Any:
        return datasets.load_dataset(fmt, data_files=paths, split="train", cache_dir=str(scratch / "hf-cache"), **kwargs)

    try:
        ds = load(plain)
    except Exception as e:  # noqa: BLE001 - find the file to name
        culprit = None
        if len(plain) > 1:
            for p in plain:
                try:
                    load([p])
                except Exception:  # noqa: BLE001
                    culprit = p
                    break
        names = culprit or ", ".join(str(f) for f in files[:5])
        raise StageError(f"cannot read {fmt} data from {names}: {type(e).__name__}: {e}") from e
    _write_columnar(ds, spec, writer, stats, what=", ".join(str(f) for f in files[:3]) + (" ..." if len(files) > 3 else ""))
    stats["files"] += len(plain)


def _write_columnar(ds: Any, spec: _Spec, writer: _Writer, stats: dict[str, Any], what: str) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    col = spec.text_column
    if col not in ds.column_names:
        raise StageError(
            f"source {writer.source!r}: {what} has no column {col!r} (columns: {ds.column_names}); "
            "set 'text_column' to the column holding the text")
    kept = spec.keep_columns
    if kept:
        writer.keep(ds.features, what)
    for batch in ds.with_format("arrow", columns=[col, *[c for c in kept if c != col]]).iter(batch_size=10_000):
        arr = batch.column(col).combine_chunks()
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            raise StageError(f"source {writer.source!r}: column {col!r} of {what} holds {arr.type}, not text")
        arr = arr.cast(pa.string())
        extras = {c: batch.column(c).combine_chunks() for c in kept}
        keep = pc.and_(pc.is_valid(arr), pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(arr.fill_null(""))), 0))
        if spec.max_chars is not None:
            n_ok = int(pc.sum(keep).as_py() or 0)
            short = pc.less_equal(pc.utf8_length(arr.fill_null("")), spec.max_chars)
            keep = pc.and_(keep, short)
            stats["skipped_long_documents"] += n_ok - int(pc.sum(keep).as_py() or 0)
            stats["skipped_empty_documents"] += len(arr) - n_ok
        else:
            stats["skipped_empty_documents"] += len(arr) - int(pc.sum(keep).as_py() or 0)
        writer.add_table(pc.filter(arr, keep), {c: pc.filter(a, keep) for c, a in extras.items()})


def _read_hub(spec: HubSource, writer: _Writer, stats: dict[str, Any], log: Any) -> None:
    from ._util import hub_offline, hub_unreachable_reason

    offline = hub_offline()
    if not offline:
        reason = hub_unreachable_reason()
        if reason:
            raise StageError(
                f"source {writer.source!r}: the hub dataset {spec.dataset!r} needs the Hugging Face hub, which is not "
                f"reachable ({reason}). Use a local copy (type 'files'), or set HF_HUB_OFFLINE=1 to use a copy in the "
                "local Hugging Face cache.")
    import datasets

    try:
        ds = datasets.load_dataset(spec.dataset, spec.subset, split=spec.split, revision=spec.revision,
                                   streaming=spec.streaming)
    except Exception as e:  # noqa: BLE001
        hint = (" The hub is offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set) and the dataset is not in the local "
                "cache.") if offline else ""
        raise StageError(f"source {writer.source!r}: cannot load the hub dataset {spec.dataset!r} "
                         f"(subset {spec.subset!r}, split {spec.split!r}): {type(e).__name__}: {e}.{hint}") from e
    if spec.streaming:
        if spec.take:
            ds = ds.take(spec.take)
        col = spec.text_column
        if spec.keep_columns:
            if ds.features is None:
                raise StageError(f"source {writer.source!r}: the streamed hub dataset {spec.dataset!r} does not "
                                 "declare its features, so keep_columns cannot type them; set streaming: false")
            writer.keep(ds.features, f"the hub dataset {spec.dataset!r}")
        buf: list[str] = []  # flushed every WRITE_BATCH_DOCS rows: memory stays bounded
        extras: dict[str, list[Any]] = {c: [] for c in spec.keep_columns}
        for row in ds:
            if col not in row:
                raise StageError(f"source {writer.source!r}: the hub dataset has no column {col!r} "
                                 f"(columns: {sorted(row)}); set 'text_column'")
            t = row[col]
            if not isinstance(t, str) or not t.strip():
                stats["skipped_empty_documents"] += 1
                continue
            if spec.max_chars is not None and len(t) > spec.max_chars:
                stats["skipped_long_documents"] += 1
                continue
            buf.append(t)
            for c in spec.keep_columns:
                extras[c].append(row.get(c))
            if len(buf) >= WRITE_BATCH_DOCS:
                writer.add(buf, extras)
                buf, extras = [], {c: [] for c in spec.keep_columns}
        writer.add(buf, extras)
    else:
        if spec.take:
            ds = ds.select(range(min(spec.take, len(ds))))
        _write_columnar(ds, spec, writer, stats, what=f"the hub dataset {spec.dataset!r}")


# ------------------------------------------------------------------ mixing


def _align_columns(parts: list[Any], names: list[str]) -> list[Any]:
    """Give every source the same columns (text, source, then each kept
    column in order of first appearance; nulls where a source lacks one)."""
    import pyarrow as pa
    from datasets import Features

    union: dict[str, Any] = {}
    for name, d in zip(names, parts):
        for c, f in d.features.items():
            if c in ("text", "source"):
                continue
            if c in union and union[c] != f:
                raise StageError(f"the kept column {c!r} has type {f} in source {name!r} but {union[c]} in an "
                                 "earlier source; keep it from sources that agree, or convert the data")
            union.setdefault(c, f)
    if not union:
        return parts
    out = []
    for d in parts:
        for c, f in union.items():
            if c not in d.column_names:
                d = d.add_column(c, pa.nulls(len(d), Features({c: f}).arrow_schema.field(c).type), feature=f)
        out.append(d.select_columns(["text", "source", *union]))
    return out


def plan_counts(avail: list[int], params: SourceParams) -> list[int]:
    """How many documents each source contributes to the mix."""
    specs = params.sources
    if specs[0].weight is not None:
        w = [s.weight for s in specs]
        tot_w = sum(w)
        p = [x / tot_w for x in w]
        if params.total is not None:
            total = params.total
        else:
            total = min(int(a / q) for a, q in zip(avail, p))
        raw = [total * q for q in p]
        counts = [int(x) for x in raw]
        # largest remainders get the leftover documents, so the counts sum to total
        for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[: total - sum(counts)]:
            counts[i] += 1
        return counts
    return [s.count if s.count is not None else a for s, a in zip(specs, avail)]


def sample_indices(n: int, k: int, rng: Any) -> Any:
    """k indices into n documents: a sorted sample without replacement, or whole
    passes plus a sorted sample when k > n."""
    import numpy as np

    if n == 0 or k == 0:
        return np.zeros(0, dtype=np.int64)
    if k == n:
        return np.arange(n, dtype=np.int64)
    passes, rest = divmod(k, n)
    parts = [np.arange(n, dtype=np.int64)] * passes
    if rest:
        parts.append(np.sort(rng.choice(n, size=rest, replace=False)).astype(np.int64))
    return np.concatenate(parts)


def split_indices(n: int, validation: float | int | None, rng: Any) -> tuple[Any, Any]:
    import numpy as np

    if not validation:
        return np.arange(n, dtype=np.int64), None
    n_val = int(round(n * validation)) if isinstance(validation, float) else int(validation)
    n_val = max(1, n_val)
    if n_val >= n:
        raise StageError(f"validation asks for {n_val} documents but the mix has only {n}")
    perm = rng.permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


# ------------------------------------------------------------------- stage


class SourceStage(Stage):
    name = "source"
    version = "1"
    description = ("Read documents from local files (text, source code, JSON Lines, JSON, Parquet, CSV, each optionally "
                   "gzipped) or the Hugging Face hub; mix sources by counts or weights; split off a seeded validation set.")
    Params = SourceParams
    inputs: dict = {}
    outputs = {"dataset": DATASET}

    @classmethod
    def fingerprint_extra(cls, params: SourceParams) -> Any:
        """(path, size, mtime_ns) of every matched local file: editing a data
        file invalidates the cached output.  Stat calls only."""
        out = []
        for spec in params.sources:
            if isinstance(spec, FilesSource):
                try:
                    files = match_files(spec)
                except StageError as e:
                    out.append({"error": str(e)})
                    continue
                stats = []
                for f in files:
                    st = f.stat()
                    stats.append((str(f), st.st_size, st.st_mtime_ns))
                out.append(stats)
            else:
                out.append(None)
        return out

    @with_quiet_datasets
    def run(self, ctx: StageContext) -> dict[str, Artifact]:
        import numpy as np
        from datasets import concatenate_datasets

        p: SourceParams = ctx.params  # type: ignore[assignment]
        seed = ctx.seed if p.seed is None else p.seed
        names: list[str] = []
        for i, spec in enumerate(p.sources):
            n = _default_name(spec, i)
            while n in names:
                n = f"{n}-{i}"
            names.append(n)

        key = {"stage": "source", "v": self.version, "params": p.model_dump(mode="json"),
               "files": self.fingerprint_extra(p)}
        store = ShardStore(ctx.checkpoint_dir / "source-shards", key, ctx.log)
        counters = ("files", "skipped_undecodable_files", "skipped_empty_files", "skipped_empty_documents",
                    "skipped_long_documents")
        totals = {c: 0 for c in counters}
        per_source: list[Any] = []
        skipped_names: list[str] = []

        jobs: list[tuple[int, str, Any]] = []  # (source index, shard name, payload)
        for i, spec in enumerate(p.sources):
            if isinstance(spec, FilesSource):
                files = match_files(spec)
                for j in range(0, len(files), FILES_PER_SHARD):
                    jobs.append((i, f"src{i:03d}-{j // FILES_PER_SHARD:05d}", files[j: j + FILES_PER_SHARD]))
            else:
                jobs.append((i, f"src{i:03d}-00000", None))

        parts: dict[int, list[Any]] = {i: [] for i in range(len(p.sources))}
        with ctx.progress("source: reading", total=len(jobs)) as prog:
            for i, shard, payload in jobs:
                spec = p.sources[i]

                def write(tmp: Path, spec: Any = spec, payload: Any = payload, i: int = i) -> dict[str, Any]:
                    stats: dict[str, Any] = {c: 0 for c in counters}
                    writer = _Writer(tmp / "data.arrow", names[i], spec.keep_columns)
                    try:
                        if isinstance(spec, HubSource):
                            _read_hub(spec, writer, stats, ctx.log)
                        else:
                            by_fmt: dict[str, list[Path]] = {}
                            for f in payload:
                                by_fmt.setdefault(_file_format(spec, f), []).append(f)
                            for fmt, files in by_fmt.items():
                                if fmt == "text":
                                    _read_text_files(files, spec, writer, stats, ctx.log)
                                else:
                                    _read_structured(files, fmt, spec, writer, stats, store.scratch, ctx.log)
                    finally:
                        writer.close()
                    stats["rows"] = writer.rows
                    stats["chars"] = writer.total_chars
                    return stats

                path, meta = store.get_or_make(shard, write)
                for c in counters:
                    totals[c] += meta.get(c, 0)
                skipped_names += meta.get("_skipped", [])
                parts[i].append(load_arrow(path / "data.arrow"))
                prog.advance(1)

        if skipped_names:
            shown = ", ".join(skipped_names[:5]) + (f" and {len(skipped_names) - 5} more" if len(skipped_names) > 5 else "")
            ctx.log.warning("skipped %d file(s) that are not valid text in their encoding: %s", len(skipped_names), shown)

        per_source = [concatenate_datasets(parts[i]) if len(parts[i]) > 1 else parts[i][0] for i in range(len(p.sources))]
        per_source = _align_columns(per_source, names)
        avail = [len(d) for d in per_source]
        for name, n in zip(names, avail):
            if n == 0:
                raise StageError(f"source {name!r} yielded no documents (see the skipped-file counts in the log)")
        counts = plan_counts(avail, p)
        rng = np.random.default_rng(seed)
        chosen = []
        for name, d, n, k in zip(names, per_source, avail, counts):
            if k > n:
                ctx.log.info("source %r: %d documents requested, %d available: repeating it", name, k, n)
            idx = sample_indices(n, k, rng)
            chosen.append(d if len(idx) == n and k == n else d.select(idx))
        mixed = concatenate_datasets(chosen) if len(chosen) > 1 else chosen[0]
        if len(mixed) == 0:
            raise StageError("the mix is empty")
        if p.shuffle:
            mixed = mixed.shuffle(seed=seed)
        train_idx, val_idx = split_indices(len(mixed), p.validation, rng)
        out = ctx.output_path("dataset")
        if val_idx is None:
            splits = {"train": mixed}
            save_dataset_dict(splits, out)
        elif getattr(mixed, "_indices", None) is None:  # rows in place: split by masks in one sequential pass
            is_val = np.zeros(len(mixed), dtype=bool)
            is_val[val_idx] = True
            table = mixed.data.table
            splits = save_streamed({"train": (mixed, kept_rows(table, ~is_val)),
                                    "validation": (mixed, kept_rows(table, is_val))}, out)
        else:  # sampled or shuffled: gather
            splits = {"train": mixed.select(train_idx), "validation": mixed.select(val_idx)}
            save_dataset_dict(splits, out)
        m = ctx.metrics
        m.update({k: v for k, v in totals.items()})
        for name, n, k in zip(names, avail, counts):
            m[f"documents.{name}"] = int(k)
            m[f"available.{name}"] = int(n)
        for s, d in splits.items():
            m[f"{s}_documents"] = len(d)
        m["shards_reused"] = store.reused
        m["shards_computed"] = store.computed
        order_metrics(ctx.metrics, ['train_documents', 'validation_documents', 'documents.'])
        return {"dataset": Artifact(DATASET, out, meta={"splits": {s: len(d) for s, d in splits.items()},
                                                         "sources": names, "text_column": "text"})}
