"""Which local files a 'files' source reads, how each is read (its format),
and the default name of a source."""

from __future__ import annotations

import fnmatch
import glob as globlib
from pathlib import Path

from recipe_runner import StageError

from .specs import FilesSource, HubSource

FORMAT_BY_SUFFIX = {
    ".jsonl": "json",
    ".json": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
}


def match_files(spec: FilesSource) -> list[Path]:
    """The files a 'files' source reads, sorted and de-duplicated."""
    found: dict[str, Path] = {}
    for raw in spec.paths():
        base, hits = _candidates(raw, spec)
        for h in hits:
            if h.is_file() and not _excluded(h, base, spec.exclude):
                found.setdefault(str(h), h)
    if not found:
        where = ", ".join(spec.paths()) + (f" (glob {spec.glob!r})" if spec.glob else "")
        raise StageError(f"source {spec.name or spec.paths()[0]!r}: no files match {where}")
    return [found[k] for k in sorted(found)]


def file_format(spec: FilesSource, path: Path) -> str:
    """'text', 'json', 'parquet' or 'csv': the source's ``format``, or by the
    file's extension (a trailing '.gz' is looked through)."""
    if spec.format != "auto":
        return spec.format
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return FORMAT_BY_SUFFIX.get(suffixes[-1] if suffixes else "", "text")


def default_name(spec: FilesSource | HubSource, index: int) -> str:
    """The source's label: its ``name``, the hub dataset's name, or the first
    path's file name without its extensions."""
    if spec.name:
        return spec.name
    if isinstance(spec, HubSource):
        return spec.dataset
    first = spec.paths()[0]
    if globlib.has_magic(first):
        first = first.split("*")[0].rstrip("/") or "files"
    name = Path(first).name
    for suf in (".gz", *FORMAT_BY_SUFFIX, ".txt"):
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
    return name or f"source{index}"


def _candidates(raw: str, spec: FilesSource) -> tuple[Path, list[Path]]:
    """``(base directory, paths)`` one entry of 'path' names: a glob pattern's
    matches, a directory's files under 'glob', or the file itself."""
    p = Path(raw).expanduser()
    if globlib.has_magic(raw):
        base = Path(raw.split("*")[0].split("?")[0].split("[")[0] or ".")
        base = base if base.is_dir() else base.parent
        return base, [Path(h) for h in globlib.glob(str(p), recursive=True)]
    if p.is_dir():
        return p, list(p.glob(spec.glob or "**/*"))
    if p.exists():
        return p.parent, [p]
    raise StageError(f"source {spec.name or raw!r}: {raw} does not exist")


def _excluded(path: Path, base: Path | None, patterns: list[str]) -> bool:
    if not patterns:
        return False
    candidates = [path.as_posix()]
    if base is not None:
        try:
            candidates.append(path.relative_to(base).as_posix())
        except ValueError:
            pass
    for pat in patterns:
        for c in candidates:
            if fnmatch.fnmatchcase(c, pat) or (pat.endswith("/**") and (c + "/").startswith(pat[:-2])):
                return True
            if pat.startswith("**/") and fnmatch.fnmatchcase(c, pat[3:]):
                return True
    return False
