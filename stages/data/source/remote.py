"""Remote inputs of a 'files' source: an entry of 'path' that is an fsspec
URL (``s3://``, ``gs://``, ``hf://``, ``https://``, ``file://``...).

An entry is listed once (:func:`list_remote`: ``info`` of the URL, and one
recursive listing under the directory or the part of a pattern before its
first wildcard, matched with the same glob rules as a local directory);
each object is then opened through fsspec and read as it is consumed, never
copied first.  The stage's key covers each object's URL, size and version
(its ETag, else its modification time: :func:`listing_key`), so an edited
object re-runs the stage and an unchanged one is cached.  Credentials come
from the environment as the filesystem's library reads them (AWS_*
variables, profiles, GOOGLE_APPLICATION_CREDENTIALS, HF_TOKEN), never from
the recipe.  fsspec and the protocol's package are imported only here and
only when a URL is listed or read: `recipe validate` touches no network."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from recipe_runner import StageError

from .specs import FilesSource

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

#: protocol -> (the package fsspec needs for it, the extra of this project that installs it)
PACKAGES = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "http": ("aiohttp", None),
    "https": ("aiohttp", None),
    "hf": ("huggingface_hub", None),
    "az": ("adlfs", None),
    "abfs": ("adlfs", None),
}

#: listing fields that identify an object's content (first found wins), then its modification time
_VERSION_FIELDS = ("ETag", "etag", "md5Hash", "blob_id", "sha256")
_MTIME_FIELDS = ("LastModified", "mtime", "last_modified", "updated", "created")


def is_url(raw: str) -> bool:
    """Whether an entry of 'path' is a URL (``scheme://...``) rather than a local path."""
    return bool(_URL.match(raw))


@dataclass(frozen=True)
class RemoteFile:
    """One object a URL entry matched: its URL, size and version (ETag or mtime) at listing time."""

    url: str
    size: int | None
    version: str | None

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        return PurePosixPath(urlsplit(self.url).path).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def suffixes(self) -> list[str]:
        return PurePosixPath(self.name).suffixes

    def open(self, storage_options: dict[str, Any], compression: str | None = None) -> Any:
        """A binary file object reading the object as it is consumed (fsspec's block reads)."""
        fs, path = filesystem(self.url, storage_options, self.url)
        return fs.open(path, "rb", compression=compression)

    def read_bytes(self, storage_options: dict[str, Any]) -> bytes:
        """The object's bytes, gunzipped when its name ends in '.gz' (as a local file's)."""
        with self.open(storage_options, "gzip" if self.suffix.lower() == ".gz" else None) as f:
            data: bytes = f.read()
            return data


def filesystem(url: str, storage_options: dict[str, Any], what: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path)`` of a URL; a missing protocol package is a StageError saying what to install."""
    protocol = url.split("://", 1)[0].lower()
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url, **storage_options)
        return fs, path
    except ImportError as e:
        package, extra = PACKAGES.get(protocol, (None, None))
        how = f'pip install "recipe-runner[{extra}]"' if extra else f"pip install {package or 'the fsspec backend'}"
        raise StageError(
            f"reading {what} needs the package {package or 'for ' + protocol + '://'}, which is not installed: {how}"
        ) from e
    except ValueError as e:  # an unknown protocol
        raise StageError(f"cannot read {what}: {e}") from e
    except TypeError as e:  # storage options the filesystem does not take
        raise StageError(f"cannot read {what}: storage_options not accepted by {protocol}://: {e}") from e


def list_remote(raw: str, spec: FilesSource, source: str) -> list[RemoteFile]:
    """The objects one URL entry names: the object itself, every object under
    a directory (prefix) matching 'glob', or the matches of a pattern, sorted;
    those 'exclude' names are left out.  A missing object or bucket, refused
    credentials or an unreachable server is a StageError naming the URL."""
    import glob as globlib

    from .files import glob_match

    fs, path = filesystem(raw, spec.storage_options, raw)
    try:
        if globlib.has_magic(path):
            root, pattern, hidden = _before_magic(path), _after_magic(path), False
        else:
            info = fs.info(path)
            if info.get("type") != "directory":
                return [_remote_file(fs, info)]
            root, pattern, hidden = path.rstrip("/"), tuple((spec.glob or "**/*").split("/")), True
        found = fs.find(root, detail=True) if root else {}
    except FileNotFoundError as e:
        raise StageError(f"source {source!r}: {_missing_bucket(fs, path, raw) or f'{raw} does not exist'}") from e
    except PermissionError as e:
        raise StageError(f"source {source!r}: {_denied(raw, e)}") from e
    except StageError:
        raise
    except Exception as e:  # botocore, aiohttp and the other clients raise types of their own
        raise StageError(f"source {source!r}: {_failure(raw, e)}") from e
    if not found and _missing_bucket(fs, path, raw):
        raise StageError(f"source {source!r}: {_missing_bucket(fs, path, raw)}")
    out = []
    for name, info in sorted(found.items()):
        rel = name[len(root) :].strip("/")
        matches = info.get("type") == "file" and glob_match(tuple(rel.split("/")), pattern, hidden)
        if matches and not _excluded(rel, spec.exclude):
            out.append(_remote_file(fs, info))
    return out


def listing_key(spec: FilesSource, raw: str) -> Any:
    """What the stage's key covers for one URL entry: each object's URL,
    size and version; or, where it cannot be listed, the reason (the run
    then stops with it)."""
    try:
        listed = [[f.url, f.size, f.version] for f in list_remote(raw, spec, spec.name or raw)]
    except StageError as e:
        _UNLISTED[_entry_id(spec, raw)] = str(e)
        return {"error": str(e)}
    _UNLISTED.pop(_entry_id(spec, raw), None)
    return listed


#: URL entries whose listing failed when this process last computed the stage's key, and why
_UNLISTED: dict[tuple[str, str], str] = {}


def _entry_id(spec: FilesSource, raw: str) -> tuple[str, str]:
    import json

    return raw, json.dumps(spec.storage_options, sort_keys=True, default=str)


def check_keyed(sources: list[Any]) -> None:
    """Refuse to read a URL entry whose listing failed when this process
    computed the stage's key (and so keyed it by the error): read now, its
    output would be committed under that key and reused whenever the same
    error recurs.  Where it still fails, that error is raised."""
    for spec in sources:
        if isinstance(spec, FilesSource):
            for raw in spec.paths():
                why = _UNLISTED.get(_entry_id(spec, raw)) if is_url(raw) else None
                if why is not None:
                    list_remote(raw, spec, spec.name or raw)  # still failing: its own error
                    raise StageError(
                        f"{raw} could not be listed when the stage's key was computed ({why}), and can now: "
                        "nothing was read; run again"
                    )


def _remote_file(fs: Any, info: dict[str, Any]) -> RemoteFile:
    version = next((info[k] for k in _VERSION_FIELDS if info.get(k)), None)
    if version is None:
        version = next((info[k] for k in _MTIME_FIELDS if info.get(k)), None)
    size = info.get("size", info.get("Size"))
    return RemoteFile(fs.unstrip_protocol(info["name"]), None if size is None else int(size), _text(version))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _before_magic(path: str) -> str:
    parts = path.split("/")
    first = next(i for i, part in enumerate(parts) if _has_magic(part))
    return "/".join(parts[:first])


def _after_magic(path: str) -> tuple[str, ...]:
    parts = path.split("/")
    first = next(i for i, part in enumerate(parts) if _has_magic(part))
    return tuple(parts[first:])


def _has_magic(part: str) -> bool:
    return any(c in part for c in "*?[")


def _excluded(rel: str, patterns: list[str]) -> bool:
    import fnmatch

    for pat in patterns:
        if fnmatch.fnmatchcase(rel, pat) or (pat.endswith("/**") and (rel + "/").startswith(pat[:-2])):
            return True
        if pat.startswith("**/") and fnmatch.fnmatchcase(rel, pat[3:]):
            return True
    return False


def _missing_bucket(fs: Any, path: str, raw: str) -> str | None:
    """The error for a URL on an object store whose bucket does not exist (None: it exists, or it is no store)."""
    bucket = path.split("/", 1)[0]
    if not (_is_object_store(fs) and bucket):
        return None
    try:
        if fs.exists(bucket):
            return None
    except Exception:  # asking is a courtesy: say the bucket is missing only when known
        return None
    return f"the bucket {bucket!r} of {raw} does not exist (or is not visible with these credentials)"


def _is_object_store(fs: Any) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    return bool({"s3", "s3a", "gs", "gcs", "az", "abfs"} & set(protocols))


def _denied(raw: str, e: Exception) -> str:
    return (
        f"access to {raw} was refused ({e}); check the credentials in the environment (for s3://: "
        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE; gs://: GOOGLE_APPLICATION_CREDENTIALS; "
        "hf://: HF_TOKEN) or set storage_options (e.g. anon: true for a public bucket)"
    )


def _failure(raw: str, e: Exception) -> str:
    name = type(e).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return _denied(raw, e)
    return f"cannot list {raw}: {name}: {e}"


def remote_listings(sources: list[Any]) -> dict[str, Any] | None:
    """``{"sources.<i>.path[.<j>]": listing}`` for every URL entry of the
    'files' sources (:func:`listing_key`); None when there is none."""
    out: dict[str, Any] = {}
    for i, spec in enumerate(sources):
        if not isinstance(spec, FilesSource):
            continue
        for j, raw in enumerate(spec.paths()):
            if is_url(raw):
                field = f"sources.{i}.path" + (f".{j}" if isinstance(spec.path, list) else "")
                out[field] = listing_key(spec, raw)
    return out or None


def check_unchanged(sources: list[Any], matched: list[Any]) -> None:
    """List every URL entry again once the stage has read it: an object
    added, removed or edited meanwhile (its output would be committed under
    the key of the old listing) is a StageError, as a local input edited
    while a stage runs is for the engine."""
    for spec, m in zip(sources, matched, strict=True):
        if m is None:
            continue
        for raw, entry in zip(spec.paths(), m.entries, strict=True):
            if is_url(raw) and set(list_remote(raw, spec, spec.name or raw)) != set(entry.files):
                raise StageError(
                    f"source {spec.name or raw!r}: {raw} changed while the stage read it; its output would be "
                    "committed under the key of the old listing, so nothing was committed: run again"
                )
