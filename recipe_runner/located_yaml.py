"""YAML loading that remembers where every value came from.

``yaml.safe_load`` semantics (no Python tags, no code), but mappings and
lists come back as :class:`LocDict` / :class:`LocList`, which carry the
file, line and column of each key/item, so an error found later (by pydantic,
by a cross-stage check) can point at the exact spot, even after ``extends:``
merges several files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import Problem, RecipeError

Loc = tuple[str, int, int]  # file, 1-based line, 1-based column


class LocDict(dict[Any, Any]):
    """A dict with ``locs[key]`` (where the key is) and ``loc`` (where the mapping starts)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.locs: dict[Any, Loc] = {}
        self.loc: Loc | None = None


class LocList(list[Any]):
    def __init__(self, *args: Any):
        super().__init__(*args)
        self.locs: list[Loc | None] = [None] * len(self)
        self.loc: Loc | None = None


def _mark(node: yaml.Node, file: str) -> Loc:
    return (file, node.start_mark.line + 1, node.start_mark.column + 1)


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type information
    file = "<string>"


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocDict:
    loader.flatten_mapping(node)
    out = LocDict()
    out.loc = _mark(node, loader.file)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            f, line, col = _mark(key_node, loader.file)
            raise RecipeError([Problem(f"duplicate key '{key}' (first at line {out.locs[key][1]})", f, line, col)])
        out[key] = loader.construct_object(value_node, deep=True)
        out.locs[key] = _mark(key_node, loader.file)
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LocList:
    out = LocList(loader.construct_object(child, deep=True) for child in node.value)
    out.locs = [_mark(child, loader.file) for child in node.value]
    out.loc = _mark(node, loader.file)
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_located(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError([Problem(f"recipe file not found: {path}")]) from None
    except UnicodeDecodeError as e:
        raise RecipeError([Problem(f"recipe is not valid UTF-8: {e}", str(path))]) from None
    return loads_located(text, str(path))


def loads_located(text: str, file: str = "<string>") -> Any:
    loader = type("_FileLoader", (_Loader,), {"file": file})(text)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = e.problem or str(e)
        if "could not determine a constructor" in str(e):
            msg = "YAML tags are not allowed in recipes (recipes never execute code): " + (e.problem or "")
        raise RecipeError(
            [Problem(msg.strip(), file, mark.line + 1 if mark else None, mark.column + 1 if mark else None)]
        ) from None
    except yaml.YAMLError as e:
        raise RecipeError([Problem(f"invalid YAML: {e}", file)]) from None
    finally:
        loader.dispose()


def to_plain(value: Any) -> Any:
    """Drop location info: plain dicts/lists all the way down."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    return value


def locate(root: Any, path: tuple[Any, ...]) -> Loc | None:
    """The location of ``root[path[0]][path[1]]...``, or of the nearest parent
    that has one (an error in a missing key points at its mapping)."""
    best: Loc | None = getattr(root, "loc", None)
    node = root
    for key in path:
        locs = getattr(node, "locs", None)
        if isinstance(node, dict) and key in node:
            if locs and key in locs:
                best = locs[key]
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            if locs and key < len(locs) and locs[key]:
                best = locs[key]
            node = node[key]
        else:
            break
        if getattr(node, "loc", None) and not isinstance(node, (dict, list)):
            best = node.loc
    return best
