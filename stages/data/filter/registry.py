"""The filters the ``filter`` stage knows: the entry-point group
``recipe_runner.filters``, where the built-in filters (those of the
``recipe-runner`` distribution) and the plugins' are registered alike.

Names are known without importing anything; a filter's module is imported
when a recipe uses it.  A name registered twice with different targets, a
module that fails to import or a target that is not a filter is an error
naming the distribution."""

from __future__ import annotations

import difflib
import functools
import sys
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal, get_args, get_origin

from .base import DocumentFilter, FilterOptions

GROUP = "recipe_runner.filters"
#: the distribution whose filters are the built-in ones (documented in the generated reference)
BUILTIN_DISTRIBUTION = "recipe-runner"

_LOADED: dict[tuple[str, str], type[DocumentFilter[Any]]] = {}


class FilterRegistryError(ValueError):
    """A filter type that cannot be used: unknown, registered twice, broken."""


def registered() -> dict[str, list[EntryPoint]]:
    """Every registration in the group, by name; read again when ``sys.path``
    changes (a test or a notebook may add a plugin while the process runs)."""
    return _scan(tuple(sys.path))


@functools.lru_cache(maxsize=4)
def _scan(path: tuple[str, ...]) -> dict[str, list[EntryPoint]]:
    out: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=GROUP):
        out.setdefault(ep.name, []).append(ep)
    return out


def load_filter(name: str) -> type[DocumentFilter[Any]]:
    """The filter class registered as ``name``."""
    found = registered()
    eps = found.get(name)
    if not eps:
        hint = difflib.get_close_matches(name, list(found), n=1, cutoff=0.6)
        raise FilterRegistryError(
            f"unknown filter type {name!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; installed: {', '.join(sorted(found)) or 'none'} (the entry-point group {GROUP!r})"
        )
    if len({ep.value for ep in eps}) > 1:
        who = "; ".join(f"{_distribution(ep)} -> {ep.value}" for ep in eps)
        raise FilterRegistryError(f"filter type {name!r} is registered by more than one package: {who}")
    return _load(name, eps[0])


def builtin_filters() -> list[type[DocumentFilter[Any]]]:
    """The filters of the ``recipe-runner`` distribution, by name."""
    builtin = [ep for eps in registered().values() for ep in eps if _distribution_name(ep) == BUILTIN_DISTRIBUTION]
    return [_load(ep.name, ep) for ep in sorted(builtin, key=lambda ep: ep.name)]


def _load(name: str, ep: EntryPoint) -> type[DocumentFilter[Any]]:
    key = (name, ep.value)
    if key not in _LOADED:
        where = f"filter {name!r} from {_distribution(ep)} ({ep.value})"
        try:
            cls = ep.load()
        except Exception as e:  # a broken plugin must not look like a missing one
            raise FilterRegistryError(f"{where} failed to import: {type(e).__name__}: {e}") from e
        _check(cls, name, where)
        _LOADED[key] = cls
    return _LOADED[key]


def _check(cls: Any, name: str, where: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, DocumentFilter)):
        raise FilterRegistryError(f"{where} is not a DocumentFilter subclass")
    if not (isinstance(cls.Options, type) and issubclass(cls.Options, FilterOptions)):
        raise FilterRegistryError(f"{where}: its Options must subclass FilterOptions")
    tag = cls.Options.model_fields["type"].annotation
    if get_origin(tag) is Literal and name not in get_args(tag):
        raise FilterRegistryError(f"{where}: its Options' type {tag} does not accept the registered name")


def _distribution_name(ep: EntryPoint) -> str | None:
    dist = ep.dist
    return None if dist is None else str(dist.metadata["Name"])


def _distribution(ep: EntryPoint) -> str:
    dist = ep.dist
    return "<unknown distribution>" if dist is None else f"{dist.metadata['Name']} {dist.version}"
