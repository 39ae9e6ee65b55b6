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

# Bounds that keep a hostile recipe from hanging or crashing the loader: a recipe
# is a few kB of YAML, so these are far above any real one.
MAX_RECIPE_BYTES = 1 << 20  # 1 MiB
MAX_DEPTH = 64  # nesting of mappings and lists
MAX_NODES = 100_000  # values after expanding every alias (a "billion laughs" file expands to 10^9)


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
        self.removed: dict[str, Loc | None] = {}  # stages: names an extends: merge dropped, and where


def _mark(node: yaml.Node, file: str) -> Loc:
    return (file, node.start_mark.line + 1, node.start_mark.column + 1)


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type information
    file = "<string>"
    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise RecipeError(
                    [Problem(f"nesting deeper than {MAX_DEPTH} levels", self.file, mark.line + 1, mark.column + 1)]
                )
            node: yaml.Node = super().compose_node(parent, index)
            return node
        finally:
            self._depth -= 1


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` stands for once every alias is expanded
    (aliases share node objects, so each node is counted once per reference)."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 1  # a (malformed) cycle counts once
    size = 1
    if isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes) for child in node.value)
    sizes[id(node)] = min(size, MAX_NODES + 1)
    return sizes[id(node)]


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocDict:
    own_keys = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
    loader.flatten_mapping(node)  # YAML merge keys (<<:) put the merged pairs first
    out = LocDict()
    out.loc = _mark(node, loader.file)
    own: set[Any] = set()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            f, line, col = _mark(key_node, loader.file)
            raise RecipeError([Problem("a mapping key must be a plain value, not a mapping or a list", f, line, col)])
        if key in own and id(key_node) in own_keys:
            f, line, col = _mark(key_node, loader.file)
            raise RecipeError([Problem(f"duplicate key '{key}' (first at line {out.locs[key][1]})", f, line, col)])
        out[key] = loader.construct_object(value_node, deep=True)  # an own key overrides a merged one
        out.locs[key] = _mark(key_node, loader.file)
        if id(key_node) in own_keys:
            own.add(key)
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
        if path.is_dir():
            raise RecipeError([Problem(f"{path} is a directory, not a recipe file")])
        if not path.is_file() and path.exists():
            raise RecipeError([Problem(f"{path} is not a regular file")])
        size = path.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise RecipeError([Problem(f"recipe file is {size:,} bytes; recipes are limited to 1 MiB", str(path))])
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError([Problem(f"recipe file not found: {path}")]) from None
    except UnicodeDecodeError as e:
        raise RecipeError([Problem(f"recipe is not valid UTF-8: {e}", str(path))]) from None
    except OSError as e:
        raise RecipeError([Problem(f"cannot read the recipe: {e.strerror or e}", str(path))]) from None
    return loads_located(text, str(path))


def loads_located(text: str, file: str = "<string>") -> Any:
    if len(text) > MAX_RECIPE_BYTES:
        raise RecipeError([Problem(f"recipe text is {len(text):,} characters; recipes are limited to 1 MiB", file)])
    loader = type("_FileLoader", (_Loader,), {"file": file})(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_NODES:
            mark = node.start_mark
            raise RecipeError(
                [
                    Problem(
                        f"the recipe expands to more than {MAX_NODES:,} values (nested YAML aliases)",
                        file,
                        mark.line + 1,
                        mark.column + 1,
                    )
                ]
            )
        return loader.construct_document(node)
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
