"""Which local files a 'files' source reads, how each is read (its format),
and the default name of a source.

Each entry of 'path' names a file, a directory (searched with 'glob') or a
glob pattern (searched from the directory before its first wildcard).  The
search never leaves that directory, the entry's root: a symbolic link is
followed only when its target is inside the root and is not a directory the
search is already in (a loop), and devices, FIFOs and sockets are never read.
What is passed over is counted by reason (:data:`SKIP_REASONS`).  A file
named by an entry itself is read wherever a link to it points (the recipe
names it), but only if it is a regular file."""

from __future__ import annotations

import errno
import fnmatch
import glob as globlib
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from recipe_runner import StageError

from .remote import RemoteFile, is_url, list_remote
from .specs import FilesSource, HubSource

#: a file a source reads: a local path, or an object a URL entry matched
InputFile = Path | RemoteFile

FORMAT_BY_SUFFIX = {
    ".jsonl": "json",
    ".json": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
}

#: why a path found under a root is not read
SKIP_REASONS = (
    "symlink outside root",
    "symlink loop",
    "broken symlink",
    "fifo",
    "socket",
    "device",
    "unreadable",
)


@dataclass
class EntryFiles:
    """The files one entry of 'path' matched, and its root: the directory a
    pattern or directory entry searched, or the parent of a file it names
    (``single``)."""

    root: Path
    files: list[InputFile]
    single: bool


@dataclass
class SourceFiles:
    """The files a 'files' source reads (sorted, each once), per entry of
    'path' too, and the paths passed over, counted by reason."""

    files: list[InputFile]
    entries: list[EntryFiles]
    skipped: Counter[str] = field(default_factory=Counter)


def match_files(spec: FilesSource, remote: bool = True) -> SourceFiles:
    """The files a 'files' source reads, sorted and de-duplicated: each URL
    entry listed once (:func:`list_remote`), or, with ``remote`` False, left
    out (an empty entry: nothing is asked of the network)."""
    found: dict[str, InputFile] = {}
    entries: list[EntryFiles] = []
    skipped: Counter[str] = Counter()
    for raw in spec.paths():
        if is_url(raw):
            listed = list_remote(raw, spec, spec.name or raw) if remote else []
            entries.append(EntryFiles(Path(), sorted(listed, key=str), single=False))
            found.update((str(f), f) for f in listed)
            continue
        entry = _entry_files(raw, spec, skipped)
        entry.files = sorted(
            (f for f in entry.files if isinstance(f, Path) and not _excluded(f, entry.root, spec.exclude)), key=str
        )
        entries.append(entry)
        for f in entry.files:
            found.setdefault(str(f), f)
    if not found:
        where = ", ".join(spec.paths()) + (f" (glob {spec.glob!r})" if spec.glob else "")
        passed = f"; passed over: {describe_skipped(skipped)}" if skipped else ""
        raise StageError(f"source {spec.name or spec.paths()[0]!r}: no files match {where}{passed}")
    return SourceFiles([found[k] for k in sorted(found)], entries, skipped)


def files_in_key(spec: FilesSource, field: str) -> dict[str, Path]:
    """The files a 'files' source reads, as the stage's local inputs (their
    content goes into its key instead of their paths): an entry of 'path'
    (``field``, or ``field.<i>`` in a list) naming a file is that file; one
    searching a directory or a pattern gives each file it matched under
    ``<entry>/<name relative to its root>`` (so a file added, renamed or
    edited changes the key), and its first file under ``<entry>`` (so the
    entry's path itself is left out of the key).  None where nothing matches:
    the run says why."""
    try:
        matched = match_files(spec, remote=False)
    except StageError:
        return {}
    out: dict[str, Path] = {}
    for j, entry in enumerate(matched.entries):
        name = f"{field}.{j}" if isinstance(spec.path, list) else field
        local = [f for f in entry.files if isinstance(f, Path)]
        if local:
            out[name] = local[0]
        if not entry.single:
            out.update({f"{name}/{f.relative_to(entry.root).as_posix()}": f for f in local})
    return out


def describe_skipped(skipped: Counter[str]) -> str:
    """``'2 symlink outside root, 1 fifo'``."""
    return ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))


def file_format(spec: FilesSource, path: InputFile) -> str:
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


def _entry_files(raw: str, spec: FilesSource, skipped: Counter[str]) -> EntryFiles:
    """The files one entry of 'path' names: a glob pattern's matches under its
    root (glob's rules: names starting with '.' only where the pattern says
    so), a directory's files under 'glob' (pathlib's rules: every name), or
    the file itself."""
    p = Path(raw).expanduser()
    if globlib.has_magic(raw):
        root, pattern = split_pattern(p)
        return EntryFiles(root, [*_walk(root, pattern, False, skipped)], single=False)
    if p.is_dir():
        return EntryFiles(p, [*_walk(p, Path(spec.glob or "**/*").parts, True, skipped)], single=False)
    if p.exists() or p.is_symlink():
        why = _named_file_problem(p)
        if why is not None:
            skipped[why] += 1
        return EntryFiles(p.parent, [p] if why is None else [], single=True)
    raise StageError(f"source {spec.name or raw!r}: {raw} does not exist")


def split_pattern(pattern: Path) -> tuple[Path, tuple[str, ...]]:
    """``(root, pattern parts)``: the directory before a glob pattern's first
    wildcard, and the rest of the pattern."""
    parts = pattern.parts
    first = next(i for i, part in enumerate(parts) if globlib.has_magic(part))
    return Path(*parts[:first]) if first else Path("."), parts[first:]


def glob_match(parts: tuple[str, ...], pattern: tuple[str, ...], hidden: bool) -> bool:
    """Whether a relative path (its parts) matches a glob pattern (its parts):
    '**' matches any number of directories (or, last in a pattern, of
    anything when ``hidden`` is False, as glob.glob's ``recursive`` does; only
    directories otherwise, as pathlib's glob does); other parts match one
    name with fnmatch's rules.  Without ``hidden``, a name starting with '.'
    matches only a pattern part starting with '.'."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        if not rest and hidden:
            return False
        for k in range(len(parts) + 1):
            if k and not hidden and parts[k - 1].startswith("."):
                return False
            if glob_match(parts[k:], rest, hidden):
                return True
        return False
    if not parts or (not hidden and parts[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], head) and glob_match(parts[1:], rest, hidden)


@dataclass
class _Walk:
    """One search of a root for the files matching a pattern."""

    root: Path
    pattern: tuple[str, ...]
    hidden: bool
    skipped: Counter[str]

    def files(self) -> list[Path]:
        """The regular files under the root that match, without leaving it:
        links are followed only to targets inside it that are not a directory
        being searched (a loop); what matches but is passed over is counted."""
        if not self.root.is_dir():
            return []
        self.root_real = Path(os.path.realpath(self.root))
        found: list[Path] = []
        todo: list[tuple[Path, tuple[str, ...], frozenset[tuple[int, int]]]] = [
            (self.root, (), frozenset({_identity(os.stat(self.root))}))
        ]
        while todo:
            directory, rel, ancestors = todo.pop()
            try:
                with os.scandir(directory) as it:
                    entries = list(it)
            except OSError:
                self.skipped["unreadable"] += 1
                continue
            for entry in entries:
                parts = (*rel, entry.name)
                kind, ident = self.classify(entry, ancestors)
                if kind == "dir":
                    if self.may_hold_matches(parts):
                        todo.append((Path(entry.path), parts, ancestors | {ident}))
                elif glob_match(parts, self.pattern, self.hidden) or (
                    kind in ("symlink loop", "symlink outside root") and self.may_hold_matches(parts)
                ):
                    if kind == "file":
                        found.append(Path(entry.path))
                    else:
                        self.skipped[kind] += 1
        return found

    def may_hold_matches(self, parts: tuple[str, ...]) -> bool:
        """Whether a directory at these relative parts can hold a match."""
        for i, name in enumerate(parts):
            if i < len(self.pattern) and self.pattern[i] == "**":
                return True
            if i >= len(self.pattern) - 1 or not glob_match((name,), (self.pattern[i],), self.hidden):
                return False
        return True

    def classify(self, entry: os.DirEntry[str], ancestors: frozenset[tuple[int, int]]) -> tuple[str, tuple[int, int]]:
        """``(what, identity)``: 'dir', 'file' or why it is passed over (:data:`SKIP_REASONS`)."""
        none = (0, 0)
        if not entry.is_symlink():
            if entry.is_file(follow_symlinks=False):
                return "file", none
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                return "unreadable", none
            if stat.S_ISDIR(st.st_mode):
                return ("symlink loop" if _identity(st) in ancestors else "dir"), _identity(st)
            return _file_kind(st.st_mode), none
        try:
            st = os.stat(entry.path)
        except OSError as e:
            return ("symlink loop" if e.errno == errno.ELOOP else "broken symlink"), none
        if not Path(os.path.realpath(entry.path)).is_relative_to(self.root_real):
            return "symlink outside root", none
        if stat.S_ISDIR(st.st_mode):
            return ("symlink loop" if _identity(st) in ancestors else "dir"), _identity(st)
        return _file_kind(st.st_mode), none


def _walk(root: Path, pattern: tuple[str, ...], hidden: bool, skipped: Counter[str]) -> list[Path]:
    return _Walk(root, pattern, hidden, skipped).files()


def _identity(st: os.stat_result) -> tuple[int, int]:
    """A directory's (device, inode): the same directory however it is reached (links, bind mounts)."""
    return st.st_dev, st.st_ino


def _file_kind(mode: int) -> str:
    """'file' for a regular file, else why it is not read."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "unreadable"


def _named_file_problem(path: Path) -> str | None:
    """Why a file an entry names itself is not read (None: it is read)."""
    try:
        st = os.stat(path)
    except OSError as e:
        return "symlink loop" if e.errno == errno.ELOOP else "broken symlink"
    kind = _file_kind(st.st_mode)
    return None if kind == "file" else kind


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
