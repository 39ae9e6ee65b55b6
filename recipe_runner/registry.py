"""The stage plugin registry: the ``recipe_runner.stages`` entry-point group.

Built-in stages are registered in this project's pyproject exactly as a third
party's would be.  Names are known without importing anything; a plugin's
module is imported only when a recipe uses it (or ``recipe stages`` lists it),
and a plugin that fails to import, or two distributions claiming one name, is
an error naming the distribution."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .errors import closest
from .stage import Params, Stage

GROUP = "recipe_runner.stages"


class PluginError(Exception):
    pass


@dataclass
class PluginEntry:
    name: str
    entry_point: EntryPoint
    distribution: str

    @property
    def target(self) -> str:
        return self.entry_point.value


def _dist_name(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is not None:
        return f"{dist.metadata['Name']} {dist.version}"
    return "<unknown distribution>"


class Registry:
    def __init__(self, group: str = GROUP, distribution: str | None = None):
        """``distribution``: only that distribution's plugins (the committed
        schema and docs cover the built-in stages alone)."""
        self.group = group
        self._entries: dict[str, list[PluginEntry]] = {}
        for ep in entry_points(group=group):
            dist = getattr(ep, "dist", None)
            if distribution is not None and (dist is None or dist.metadata["Name"] != distribution):
                continue
            self._entries.setdefault(ep.name, []).append(PluginEntry(ep.name, ep, _dist_name(ep)))
        self._loaded: dict[str, type[Stage[Any]]] = {}

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def suggest(self, name: str) -> str | None:
        return closest(name, self._entries)

    def entry(self, name: str) -> PluginEntry:
        entries = self._entries.get(name)
        if not entries:
            hint = self.suggest(name)
            raise PluginError(
                f"unknown stage type '{name}'"
                + (f" (did you mean '{hint}'?)" if hint else "")
                + f"; installed: {', '.join(self.names()) or 'none'}"
            )
        targets = {e.target for e in entries}
        if len(targets) > 1:
            who = "; ".join(f"{e.distribution} -> {e.target}" for e in entries)
            raise PluginError(
                f"stage type '{name}' is registered by more than one plugin: {who}. Uninstall one of them."
            )
        return entries[0]

    def load(self, name: str) -> type[Stage[Any]]:
        if name in self._loaded:
            return self._loaded[name]
        entry = self.entry(name)
        try:
            cls = entry.entry_point.load()
        except Exception as e:  # a broken plugin must not look like a missing one
            raise PluginError(
                f"stage plugin '{name}' from {entry.distribution} ({entry.target}) "
                f"failed to import: {type(e).__name__}: {e}"
            ) from e
        if not (isinstance(cls, type) and issubclass(cls, Stage)):
            raise PluginError(
                f"stage plugin '{name}' from {entry.distribution} ({entry.target}) "
                "is not a recipe_runner.Stage subclass"
            )
        if not (isinstance(cls.Params, type) and issubclass(cls.Params, Params)):
            raise PluginError(
                f"stage plugin '{name}' from {entry.distribution}: its Params must subclass recipe_runner.Params"
            )
        if name != cls.name and name not in cls.aliases:
            raise PluginError(
                f"stage plugin registered as '{name}' by {entry.distribution} declares "
                f"name '{cls.name}' (and aliases {list(cls.aliases)}); the entry-point name "
                "must be one of them"
            )
        self._loaded[name] = cls
        return cls

    def describe(self, name: str) -> dict[str, Any]:
        cls = self.load(name)
        return {
            "name": name,
            "canonical": cls.name,
            "version": cls.version,
            "description": cls.description or (cls.__doc__ or "").strip().split("\n\n")[0],
            "distribution": self.entry(name).distribution,
        }


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    return Registry()
