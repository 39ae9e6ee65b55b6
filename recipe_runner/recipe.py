"""Recipe loading and validation.

Pipeline: YAML (with locations) -> ``extends:`` merge -> ``--set`` overrides
-> ``${...}`` interpolation -> pydantic validation of the recipe and of each
stage's parameters (the plugin's own model) -> input binding and cross-stage
checks.  Every problem found is collected, with file:line, stage and field,
and raised together as one :class:`RecipeError`."""

from __future__ import annotations

import os
import re
import sysconfig
import typing
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import launch as launch_block
from .errors import Problem, RecipeError, closest
from .launch import LaunchSpec
from .located_yaml import Loc, LocDict, LocList, load_located, loads_located, locate, to_plain
from .redaction import SECRET_NAME_RE, redact
from .registry import PluginError, Registry, default_registry
from .stage import Facts, Input, Params, PlanView, Stage, Upstream
from .tracking import TrackingSpec, missing_package

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # fullmatch: names become directory names
NAME_RULE = "must start with a letter or digit, use only letters, digits, '.', '_' and '-', and be at most 100 long"
MAX_SEED = 2**32 - 1  # numpy's seeds stop there
Location = tuple[str | None, int | None, int | None]  # file, line, column
VAR_RE = re.compile(r"(?<!\$)\$\{([^}]*)\}")


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field(description="the stage plugin's registry name (see `recipe stages`)")
    name: str | None = Field(None, description="unique stage name; defaults to the type")
    params: dict[str, Any] = Field(default_factory=dict, description="the plugin's parameters")
    inputs: dict[str, str] = Field(
        default_factory=dict, description="input slot -> earlier stage name (or 'stage.output')"
    )
    after: str | None = Field(None, description="with extends: insert this new stage after the named base stage")
    before: str | None = Field(None, description="with extends: insert this new stage before the named base stage")
    remove: bool = Field(
        False, description="with extends: drop the base stage of this name (the entry needs only `name`)"
    )
    launch: dict[str, Any] | None = Field(
        None, description="this stage's launch block, merged over the recipe's (stages that can run distributed)"
    )


class RecipeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="recipe name; names the run directory")
    description: str = ""
    seed: int = Field(0, ge=0, le=MAX_SEED, strict=True, description="global seed, part of every stage's fingerprint")
    extends: str | list[str] | None = Field(None, description="base recipe path(s), relative to this file")
    vars: dict[str, Any] = Field(default_factory=dict, description="values reused as ${vars.NAME}")
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="parameters filled into every stage whose plugin has that field"
    )
    cache: str | None = Field(
        None,
        description="a shared stage cache (a directory, file:// or s3://bucket/prefix) that runs pull finished "
        "stages from and push them to; --cache and RECIPE_CACHE override it",
    )
    tracking: TrackingSpec | None = Field(
        None, description="experiment tracking for every stage: {backend: wandb|mlflow|tensorboard, project, dir}"
    )
    launch: LaunchSpec | None = Field(
        None,
        description="processes, nodes, launcher and strategy of every stage that can run distributed "
        "(pretrain, sft, reward, dpo); a stage's own launch: is merged over it",
    )
    secrets: list[str] = Field(
        default_factory=list,
        description="environment variables whose values are secrets: wherever a ${env.NAME} of theirs is used, the "
        "value is redacted (***) in the manifest, logs and `recipe show`; names containing KEY, TOKEN, SECRET, "
        "PASSWORD or CREDENTIAL always are",
    )
    stages: list[StageSpec] = Field(min_length=1)


@dataclass
class Binding:
    """Which upstream output feeds an input slot."""

    stage: str
    output: str
    kind: str


StageClass = type[Stage[Any]]


@dataclass
class ResolvedStage:
    index: int
    name: str
    type: str
    stage_cls: StageClass
    params: Params
    bindings: dict[str, Binding | None]
    outputs: dict[str, str]
    facts: dict[str, Facts] = field(default_factory=dict)  # output -> what the plugin declared about it
    launch: LaunchSpec | None = None  # set for a stage that runs distributed (its merged launch block)

    def params_json(self) -> dict[str, Any]:
        return self.params.model_dump(mode="json")


@dataclass
class Recipe:
    name: str
    description: str
    seed: int
    vars: dict[str, Any]
    defaults: dict[str, Any]
    stages: list[ResolvedStage]
    file: Path
    merged: dict[str, Any] = field(default_factory=dict)  # after extends/--set/vars, plain
    secrets: frozenset[str] = frozenset()  # values from secret environment variables: redacted on output
    cache: str | None = None  # the recipe's shared stage cache URL
    tracking: TrackingSpec | None = None
    overrides: tuple[str, ...] = ()  # the --set assignments it was loaded with (ranks of a launch reload it)
    trust_code: bool = False

    def stage(self, name: str) -> ResolvedStage:
        for s in self.stages:
            if s.name == name:
                return s
        hint = closest(name, [s.name for s in self.stages])
        raise KeyError(
            f"no stage named '{name}' in recipe '{self.name}'"
            + (f" (did you mean '{hint}'?)" if hint else "")
            + f"; stages: {', '.join(s.name for s in self.stages)}"
        )

    def resolved_dict(self, full: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["seed"] = self.seed
        if self.vars:
            out["vars"] = self.vars
        if self.defaults:
            out["defaults"] = self.defaults
        stages = []
        for s in self.stages:
            params = s.params.model_dump(mode="json") if full else s.params.model_dump(mode="json", exclude_unset=True)
            entry: dict[str, Any] = {"name": s.name, "type": s.type, "params": params}
            ins = {slot: f"{b.stage}.{b.output}" for slot, b in s.bindings.items() if b is not None}
            if ins:
                entry["inputs"] = ins
            stages.append(entry)
        out["stages"] = stages
        redacted: dict[str, Any] = redact(out, self.secrets)
        return redacted

    def stage_params_json(self, stage: ResolvedStage) -> dict[str, Any]:
        """A stage's parameters as written to disk: secrets redacted."""
        params: dict[str, Any] = redact(stage.params_json(), self.secrets)
        return params


# ---------------------------------------------------------------- paths/vars


def builtin_paths(recipe_file: Path) -> dict[str, str]:
    from importlib.resources import files

    try:
        data = str(files("recipe_runner_recipes").joinpath("data"))
    except ModuleNotFoundError:
        data = str(Path(__file__).resolve().parent.parent / "recipes" / "data")
    return {
        "data": data,
        "stdlib": sysconfig.get_paths()["stdlib"],
        "recipe_dir": str(recipe_file.resolve().parent),
        "cwd": os.getcwd(),
    }


# ---------------------------------------------------------------- merging


def _stage_key(entry: Any) -> Any:
    if isinstance(entry, dict):
        return entry.get("name") or entry.get("type")
    return None


def deep_merge(base: Any, over: Any) -> Any:
    """``over`` onto ``base``: mappings merge key by key, everything else is
    replaced; ``null`` over an inherited key deletes it (as Helm values do), so
    a child recipe can drop what its base sets."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = LocDict(base)
        out.locs = dict(getattr(base, "locs", {}))
        out.loc = getattr(over, "loc", None) or getattr(base, "loc", None)
        for k, v in over.items():
            if v is None and k in base:
                del out[k]
                out.locs.pop(k, None)
                continue
            out[k] = deep_merge(base[k], v) if k in base else v
            over_locs = getattr(over, "locs", {})
            if k in over_locs:
                out.locs[k] = over_locs[k]
        return out
    return over


def merge_stages(base: list[Any], over: list[Any], problems: list[Problem]) -> LocList:
    """Stages merge by name: a child entry with a base stage's name deep-merges
    into it (or drops it, with ``remove: true``); a new one is appended, or
    placed by ``after:`` / ``before:``."""
    out = LocList(base)
    out.removed = removed = dict(getattr(base, "removed", {}))
    out.loc = getattr(base, "loc", None)
    over_locs = getattr(over, "locs", [None] * len(over))
    for i, entry in enumerate(over):
        key = _stage_key(entry)
        idx = next((j for j, b in enumerate(out) if _stage_key(b) == key), None)
        if isinstance(entry, dict) and entry.get("remove") is True:
            if idx is None:
                loc = over_locs[i] or (None, None, None)
                problems.append(
                    Problem(
                        f"remove: no base stage named '{key}'",
                        loc[0],
                        loc[1],
                        loc[2],
                        stage=str(key),
                        suggestion=closest(str(key), [_stage_key(b) for b in out]),
                    )
                )
            else:
                del out[idx]
                del out.locs[idx]
                removed[str(key)] = over_locs[i]
            continue
        if idx is not None:
            out[idx] = deep_merge(out[idx], entry)
            continue
        pos = len(out)
        anchor = entry.get("after") or entry.get("before") if isinstance(entry, dict) else None
        if anchor:
            j = next((j for j, b in enumerate(out) if _stage_key(b) == anchor), None)
            if j is None:
                loc = over_locs[i] or (None, None, None)
                problems.append(
                    Problem(
                        f"no base stage named '{anchor}' to insert next to",
                        loc[0],
                        loc[1],
                        loc[2],
                        stage=str(key),
                        suggestion=closest(anchor, [_stage_key(b) for b in out]),
                    )
                )
            else:
                pos = j + 1 if entry.get("after") else j
        if anchor:  # placed: the keys did their job
            entry = LocDict({k: v for k, v in entry.items() if k not in ("after", "before")})
            entry.locs = {k: v for k, v in over[i].locs.items() if k not in ("after", "before")}
            entry.loc = over[i].loc
        out.insert(pos, entry)
        out.locs.insert(pos, over_locs[i])
    return out


def _check_removed_references(data: Any, problems: list[Problem]) -> set[str]:
    """A stage removed through ``extends:`` that other stages still name under
    ``inputs:``: one problem per removed stage, listing each dependent and the
    fix.  Returns the removed names (their dangling references are not
    reported again)."""
    stages = data.get("stages") if isinstance(data, dict) else None
    removed: dict[str, Loc | None] = getattr(stages, "removed", {})
    for name, loc in removed.items():
        users = [
            (str(_stage_key(s)), slot)
            for s in stages or []
            if isinstance(s, dict) and isinstance(s.get("inputs"), dict)
            for slot, ref in s["inputs"].items()
            if isinstance(ref, str) and ref.partition(".")[0] == name
        ]
        if users:
            listed = ", ".join(f"'{u}' (inputs.{slot})" for u, slot in users)
            fix = "; ".join(f"{{name: {u}, inputs: {{{slot}: null}}}}" for u, slot in users)
            f, line, col = loc or (None, None, None)
            problems.append(
                Problem(
                    f"stage '{name}' is removed, but {listed} still name it; drop those inputs in this recipe too "
                    f"(e.g. {fix}) or keep the stage",
                    f,
                    line,
                    col,
                    stage=name,
                )
            )
    return set(removed)


def load_merged(path: Path, problems: list[Problem], _seen: tuple[Path, ...] = ()) -> Any:
    path = path.resolve()
    if path in _seen:
        raise RecipeError([Problem("extends: cycle: " + " -> ".join(str(p) for p in _seen + (path,)), str(path))])
    data = load_located(path)
    if not isinstance(data, dict):
        raise RecipeError([Problem("a recipe must be a YAML mapping (name:, stages:, ...)", str(path), 1, 1)])
    ext = data.get("extends")
    if not ext:
        return data
    merged: Any = None
    for bpath in _base_paths(ext, path, getattr(data, "locs", {}).get("extends", (str(path), None, None))):
        base = load_merged(bpath, problems, _seen + (path,))
        merged = base if merged is None else _merge_recipe(merged, base, problems)
    out = _merge_recipe(merged, data, problems)
    out.pop("extends", None)
    return out


def _base_paths(ext: Any, path: Path, loc: Location) -> list[Path]:
    """The files ``extends:`` names (one path or a list of them, relative to the recipe)."""
    names = [ext] if isinstance(ext, str) else ext
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise RecipeError([Problem("extends: must be a recipe path or a list of them", *loc, field="extends")])
    out = []
    for name in names:
        bpath = path.parent / name
        if not bpath.exists():
            raise RecipeError([Problem(f"extends: base recipe not found: {bpath}", *loc, field="extends")])
        if not bpath.is_file():
            raise RecipeError([Problem(f"extends: {bpath} is not a recipe file", *loc, field="extends")])
        out.append(bpath)
    return out


def _merge_recipe(base: Any, over: Any, problems: list[Problem]) -> Any:
    stages_over = over.get("stages")
    plain_over = LocDict({k: v for k, v in over.items() if k != "stages"})
    plain_over.locs = {k: v for k, v in over.locs.items() if k != "stages"}
    plain_over.loc = over.loc
    out = deep_merge(base, plain_over)
    if stages_over is not None:
        if isinstance(base.get("stages"), list) and isinstance(stages_over, list):
            out["stages"] = merge_stages(base["stages"], stages_over, problems)
        else:
            out["stages"] = stages_over
        out.locs["stages"] = over.locs.get("stages")
    return out


# ---------------------------------------------------------------- --set


def apply_set(data: Any, assignment: str, problems: list[Problem]) -> None:
    """``a.b.c=value``; under ``stages`` a segment may name a stage."""
    where = f"--set {assignment}"
    if "=" not in assignment:
        problems.append(Problem("expected KEY.PATH=VALUE", where))
        return
    key, raw = assignment.split("=", 1)
    try:
        value = loads_located(raw, where) if raw.strip() else ""
    except RecipeError as e:
        problems.extend(e.problems)
        return
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        problems.append(Problem("empty key", where))
        return
    node = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            idx = None
            if part.isdigit() and int(part) < len(node):
                idx = int(part)
            else:
                idx = next((j for j, e in enumerate(node) if _stage_key(e) == part), None)
            if idx is None:
                problems.append(
                    Problem(
                        f"no stage '{part}'",
                        where,
                        field=".".join(parts[: i + 1]),
                        suggestion=closest(part, [_stage_key(e) for e in node]),
                    )
                )
                return
            if last:
                node[idx] = value
                return
            node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
                if hasattr(node, "locs"):
                    node.locs[part] = (where, None, None)
                return
            if part not in node or not isinstance(node[part], (dict, list)):
                node[part] = LocDict()
                node[part].loc = (where, None, None)
                if hasattr(node, "locs"):
                    node.locs[part] = (where, None, None)
            node = node[part]
        else:
            problems.append(Problem(f"cannot set inside a {type(node).__name__}", where, field=".".join(parts[:i])))
            return


# ---------------------------------------------------------------- ${...}


class _Cycle(LookupError):
    pass


class _References:
    """Resolves ``${vars.X}``, ``${paths.X}`` and ``${env.X}``: vars may use each
    other (a cycle is an error, not a recursion), and every value taken from an
    environment variable that holds a secret is remembered for redaction."""

    def __init__(self, raw_vars: dict[str, Any], paths: dict[str, str], secret_env: set[str], root: Any):
        self.raw_vars, self.paths, self.secret_env, self.root = raw_vars, paths, secret_env, root
        self.vars: dict[str, Any] = {}
        self.secrets: set[str] = set()
        self._resolving: list[str] = []

    def resolve_vars(self, problems: list[Problem]) -> None:
        for name in self.raw_vars:
            self._var(name, problems)

    def _var(self, name: str, problems: list[Problem]) -> Any:
        if name in self.vars:
            return self.vars[name]
        if name in self._resolving:
            chain = " -> ".join(f"vars.{n}" for n in [*self._resolving[self._resolving.index(name) :], name])
            raise _Cycle(f"'${{vars.{name}}}' refers to itself ({chain})")
        self._resolving.append(name)
        try:
            value = self.substitute(self.raw_vars[name], problems, ("vars", name))
        finally:
            self._resolving.pop()
        self.vars[name] = value
        return value

    def lookup(self, expr: str, problems: list[Problem]) -> Any:
        ns, _, key = expr.strip().partition(".")
        if ns not in ("vars", "paths", "env") or not key:
            raise LookupError(
                f"unknown reference '${{{expr}}}': use ${{vars.NAME}}, ${{paths.NAME}} or ${{env.NAME}}",
                closest(ns, ("vars", "paths", "env")) if ns not in ("vars", "paths", "env") else None,
            )
        head, *rest = key.split(".")
        if ns == "env":
            if head not in os.environ or rest:
                raise LookupError(f"'${{{expr}}}' is not defined (no environment variable {key})", None)
            value: Any = os.environ[head]
            if SECRET_NAME_RE.search(head) or head in self.secret_env:
                self.secrets.add(value)
            return value
        scope: dict[str, Any] = self.paths if ns == "paths" else self.raw_vars
        if head not in scope:
            raise LookupError(f"'${{{expr}}}' is not defined", closest(head, scope))
        cur = self._var(head, problems) if ns == "vars" else scope[head]
        for part in rest:
            if not (isinstance(cur, dict) and part in cur):
                raise LookupError(f"'${{{expr}}}' is not defined", closest(part, cur if isinstance(cur, dict) else []))
            cur = cur[part]
        return cur

    def substitute(self, data: Any, problems: list[Problem], path: tuple[Any, ...]) -> Any:
        if isinstance(data, dict):
            for k in list(data):
                data[k] = self.substitute(data[k], problems, path + (k,))
            return data
        if isinstance(data, list):
            for i in range(len(data)):
                data[i] = self.substitute(data[i], problems, path + (i,))
            return data
        if not isinstance(data, str) or "${" not in data:
            return data
        try:
            m = VAR_RE.fullmatch(data)
            if m:
                return to_plain(self.lookup(m.group(1), problems))
            out = VAR_RE.sub(lambda mm: str(self.lookup(mm.group(1), problems)), data)
            return out.replace("$${", "${")
        except LookupError as e:
            if isinstance(e, _Cycle) and self._resolving and path[1:2] != (self._resolving[0],):
                raise  # reported once, at the var where the chain started
            loc = locate(self.root, path) or (None, None, None)
            hint = e.args[1] if len(e.args) > 1 else None
            problems.append(Problem(e.args[0], loc[0], loc[1], loc[2], field=_dotted(path), suggestion=hint))
            return data


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (("." if out else "") + str(p))
    return out


# ---------------------------------------------------------------- pydantic errors


def _unwrap(tp: Any) -> list[Any]:
    """Candidate pydantic models (or containers) inside an annotation."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        out = []
        for a in typing.get_args(tp):
            out.extend(_unwrap(a))
        return out
    return [tp]


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at ``loc`` inside ``model`` (for did-you-mean)."""
    cands: list[Any] = [model]
    for part in loc:
        nxt: list[Any] = []
        for c in cands:
            for t in _unwrap(c):
                origin = typing.get_origin(t)
                if isinstance(t, type) and issubclass(t, BaseModel):
                    if isinstance(part, str) and part in t.model_fields:
                        nxt.extend(_unwrap(t.model_fields[part].annotation))
                    elif isinstance(part, str):
                        # a discriminated-union tag: keep the member whose tag matches
                        for f in t.model_fields.values():
                            if typing.get_origin(f.annotation) is typing.Literal and part in typing.get_args(
                                f.annotation
                            ):
                                nxt.append(t)
                elif origin in (list, tuple, set) and isinstance(part, int):
                    nxt.extend(_unwrap(typing.get_args(t)[0]))
                elif origin is dict and isinstance(part, str):
                    nxt.extend(_unwrap(typing.get_args(t)[1]))
        cands = nxt
    names: list[str] = []
    for c in cands:
        for t in _unwrap(c):
            if isinstance(t, type) and issubclass(t, BaseModel):
                names.extend(t.model_fields)
    return names


def _pydantic_problems(
    err: ValidationError, model: type[BaseModel], root: Any, prefix: tuple[Any, ...], stage: str | None
) -> list[Problem]:
    out = []
    for e in err.errors():
        loc = tuple(e["loc"])
        # pydantic appends the union member tag to loc; keep only real keys for locating
        f, line, col = locate(root, prefix + loc) or (None, None, None)
        msg = e["msg"]
        suggestion = None
        if e["type"] == "extra_forbidden":
            key = loc[-1]
            suggestion = closest(str(key), _fields_at(model, loc[:-1]))
            msg = f"unknown key '{key}'"
        elif e["type"] == "missing":
            msg = f"missing required field '{loc[-1]}'"
        elif "input" in e and e["type"] not in ("missing",):
            shown = repr(e["input"])
            if len(shown) > 60:
                shown = shown[:57] + "..."
            msg = f"{msg} (got {shown})"
        out.append(
            Problem(
                msg,
                f,
                line,
                col,
                stage=stage,
                field=_dotted(prefix + loc) if prefix or loc else None,
                suggestion=suggestion,
            )
        )
    return out


# ---------------------------------------------------------------- main entry


def load_recipe(
    path: str | Path, overrides: list[str] | None = None, registry: Registry | None = None, trust_code: bool = False
) -> Recipe:
    """Load, merge, interpolate and validate a recipe; raise RecipeError with
    every problem found.  ``trust_code``: allow stages to run code the recipe
    names (``recipe run --trust-code``)."""
    registry = registry or default_registry()
    path = Path(path)
    problems: list[Problem] = []
    data = load_merged(path, problems)
    removed = _check_removed_references(data, problems)
    for assignment in overrides or []:
        apply_set(data, assignment, problems)
    secrets = _interpolate_recipe(data, path, problems)
    if problems:
        raise _redacted_error(problems, secrets)

    plain = to_plain(data)
    spec, stage_specs = _validate_specs(plain, data, problems)
    defaults = spec.defaults if spec else (plain.get("defaults") if isinstance(plain.get("defaults"), dict) else {})
    file_loc = (str(path), None, None)
    recipe_name = spec.name if spec else str(plain.get("name", ""))
    if spec and spec.tracking and (why_not := missing_package(spec.tracking)):
        f, line, col = locate(data, ("tracking", "backend")) or file_loc
        problems.append(Problem(why_not, f, line, col, field="tracking.backend"))
    if recipe_name and not NAME_RE.fullmatch(recipe_name):
        f, line, col = locate(data, ("name",)) or file_loc
        problems.append(Problem(f"recipe name {recipe_name[:120]!r} {NAME_RULE}", f, line, col, field="name"))
    launch_default = plain.get("launch") if isinstance(plain.get("launch"), dict) else None
    resolved = _resolve_stages(stage_specs, defaults, registry, data, file_loc, problems)
    _resolve_launch(resolved, launch_default, dict(stage_specs), data, problems)
    spec_inputs = {i: s.inputs for i, s in stage_specs}
    _bind_inputs(resolved, spec_inputs, data, file_loc, problems, removed)
    if not trust_code:
        _refuse_code(resolved, data, file_loc, problems)
    if not problems:
        _check_across_stages(resolved, data, file_loc, problems)
    if problems:
        raise _redacted_error(problems, secrets)
    assert spec is not None
    recipe = Recipe(
        spec.name,
        spec.description,
        spec.seed,
        dict(spec.vars),
        dict(defaults),
        resolved,
        path,
        plain,
        frozenset(secrets),
        spec.cache,
        spec.tracking,
        tuple(overrides or ()),
        trust_code,
    )
    return recipe


def _redacted_error(problems: list[Problem], secrets: set[str]) -> RecipeError:
    for p in problems:
        p.message = redact(p.message, secrets)
    return RecipeError(problems)


def _interpolate_recipe(data: LocDict, path: Path, problems: list[Problem]) -> set[str]:
    """``${...}``: vars first (they may use paths/env and each other), then the
    rest; returns the secret values taken from the environment."""
    raw_vars = data.get("vars")
    secret_env = data.get("secrets")
    refs = _References(
        raw_vars if isinstance(raw_vars, dict) else {},
        builtin_paths(path),
        {str(n) for n in secret_env} if isinstance(secret_env, list) else set(),
        data,
    )
    refs.resolve_vars(problems)
    if isinstance(data.get("vars"), dict):
        data["vars"].update(refs.vars)
    for k in list(data):
        if k != "vars":
            data[k] = refs.substitute(data[k], problems, (k,))
    return refs.secrets


def _validate_specs(
    plain: dict[str, Any], data: LocDict, problems: list[Problem]
) -> tuple[RecipeSpec | None, list[tuple[int, StageSpec]]]:
    """The recipe's own keys, then each stage entry on its own, so one bad
    entry does not hide the problems of the others."""
    spec: RecipeSpec | None = None
    try:
        spec = RecipeSpec.model_validate(plain)
    except ValidationError as e:
        problems.extend(
            p for p in _pydantic_problems(e, RecipeSpec, data, (), None) if not (p.field or "").startswith("stages[")
        )
    raw_stages = plain.get("stages") if isinstance(plain.get("stages"), list) else []
    stage_specs: list[tuple[int, StageSpec]] = []
    for i, raw in enumerate(raw_stages or []):
        if isinstance(raw, dict) and raw.get("remove") is True and "type" not in raw:
            raw = {**raw, "type": ""}  # a removal names a base stage; _check_stage_name says there is none
        try:
            stage_specs.append((i, StageSpec.model_validate(raw)))
        except ValidationError as e:
            label = (raw.get("name") or raw.get("type")) if isinstance(raw, dict) else None
            problems.extend(_pydantic_problems(e, StageSpec, data, ("stages", i), label))
    return spec, stage_specs


def _resolve_stages(
    stage_specs: list[tuple[int, StageSpec]],
    defaults: dict[str, Any],
    registry: Registry,
    data: LocDict,
    file_loc: Location,
    problems: list[Problem],
) -> list[ResolvedStage]:
    """Stage names, plugin types and parameters (recipe defaults filled in)."""
    resolved: list[ResolvedStage] = []
    seen: dict[str, int] = {}
    used_defaults: set[str] = set()
    for i, s in stage_specs:
        name = s.name or s.type
        f, line, col = locate(data, ("stages", i)) or file_loc
        _check_stage_name(name, i, seen, s.remove, (f, line, col), problems)
        seen[name] = i
        if s.remove:
            continue
        if s.after or s.before:
            which = "after" if s.after else "before"
            msg = f"{which}: places a stage among a base recipe's stages, and this recipe has no extends:"
            problems.append(Problem(msg, f, line, col, stage=name, field=f"stages[{i}].{which}"))
        cls = _load_plugin(s.type, name, i, registry, data, (f, line, col), problems)
        if cls is None:
            continue
        params_in = dict(to_plain(s.params))
        for k, v in defaults.items():
            if k in cls.Params.model_fields:
                used_defaults.add(k)
                params_in.setdefault(k, v)
        try:
            params = cls.Params.model_validate(params_in)
        except ValidationError as e:
            problems.extend(_pydantic_problems(e, cls.Params, data, ("stages", i, "params"), name))
            continue
        resolved.append(ResolvedStage(i, name, s.type, cls, params, {}, dict(cls.output_slots(params))))

    all_fields = {f for r in resolved for f in r.stage_cls.Params.model_fields}
    for k in defaults:
        if k not in used_defaults and resolved:
            f, line, col = locate(data, ("defaults", k)) or file_loc
            msg = f"default '{k}' is not a parameter of any stage in this recipe"
            problems.append(Problem(msg, f, line, col, field=f"defaults.{k}", suggestion=closest(k, all_fields)))
    return resolved


def _resolve_launch(
    resolved: list[ResolvedStage],
    recipe_level: dict[str, Any] | None,
    specs: dict[int, StageSpec],
    data: LocDict,
    problems: list[Problem],
) -> None:
    """Each stage's launch block: the recipe's merged with its own, for the
    stages whose plugin can run distributed; a stage's own block on a stage
    that cannot is an error saying why."""
    for r in resolved:
        own = specs[r.index].launch
        if r.stage_cls.distributed is not True:
            if own:
                why = r.stage_cls.distributed if isinstance(r.stage_cls.distributed, str) else "it runs in one process"
                f, line, col = locate(data, ("stages", r.index, "launch")) or (None, None, None)
                msg = f"stage '{r.name}' ({r.type}) cannot run distributed: {why}; remove its launch:"
                problems.append(Problem(msg, f, line, col, stage=r.name, field=f"stages[{r.index}].launch"))
            continue
        merged = launch_block.merge(recipe_level, own)
        if not merged:
            continue
        try:
            r.launch = LaunchSpec.model_validate(merged)
        except ValidationError as e:
            if own:  # the recipe-level block alone is reported by the recipe's own validation
                problems.extend(_pydantic_problems(e, LaunchSpec, data, ("stages", r.index, "launch"), r.name))


def _check_stage_name(
    name: str, i: int, seen: dict[str, int], remove: bool, loc: Location, problems: list[Problem]
) -> None:
    f, line, col = loc
    if not NAME_RE.fullmatch(name):
        problems.append(
            Problem(
                f"stage name {name[:120]!r} {NAME_RULE}",
                f,
                line,
                col,
                stage=name,
                field=f"stages[{i}].name",
            )
        )
    if name in seen:
        problems.append(
            Problem(
                f"two stages are named '{name}' (the other is stages[{seen[name]}]); give each a unique `name:`",
                f,
                line,
                col,
                stage=name,
            )
        )
    if remove:
        problems.append(
            Problem(
                f"remove: true drops a stage of a base recipe, and no base recipe (extends:) "
                f"has a stage named '{name}'",
                f,
                line,
                col,
                stage=name,
                field=f"stages[{i}].remove",
            )
        )


def _load_plugin(
    type_: str, name: str, i: int, registry: Registry, data: LocDict, loc: Location, problems: list[Problem]
) -> StageClass | None:
    f, line, col = loc
    if type_ not in registry:
        tf, tline, tcol = locate(data, ("stages", i, "type")) or loc
        problems.append(
            Problem(
                f"unknown stage type '{type_}'",
                tf,
                tline,
                tcol,
                stage=name,
                field=f"stages[{i}].type",
                suggestion=registry.suggest(type_),
            )
        )
        return None
    try:
        return registry.load(type_)
    except PluginError as e:
        problems.append(Problem(str(e), f, line, col, stage=name))
        return None


def _bind_inputs(
    resolved: list[ResolvedStage],
    spec_inputs: dict[int, dict[str, str]],
    data: LocDict,
    file_loc: Location,
    problems: list[Problem],
    removed: Collection[str] = (),
) -> None:
    """Each input slot: the stage the recipe names, or the latest upstream
    producer of an accepted kind (a name removed by extends: is reported once,
    by _check_removed_references)."""
    by_name = {r.name: r for r in resolved}
    for r in resolved:
        named = spec_inputs[r.index]
        slots = dict(r.stage_cls.input_slots(r.params))
        for slot in named:
            if slot not in slots:
                f, line, col = locate(data, ("stages", r.index, "inputs", slot)) or file_loc
                problems.append(
                    Problem(
                        f"'{r.type}' has no input '{slot}' (its inputs: {', '.join(slots) or 'none'})",
                        f,
                        line,
                        col,
                        stage=r.name,
                        field=f"stages[{r.index}].inputs.{slot}",
                        suggestion=closest(slot, slots),
                    )
                )
        upstream = [u for u in resolved if u.index < r.index]
        for slot, want in slots.items():
            f, line, col = (
                locate(data, ("stages", r.index, "inputs", slot)) or locate(data, ("stages", r.index)) or file_loc
            )
            if slot in named:
                b, msg, hint = _bind_explicit(named[slot], want, upstream, by_name, r)
            elif want.auto:
                b, msg, hint = _bind_default(want, upstream)
            else:
                b, msg, hint = None, None, None
            if b is None and msg is None and not want.optional:
                msg = (
                    f"needs an input '{slot}' ({' or '.join(want.kinds)}) but no earlier stage produces one; "
                    f"add a stage that does, or name one under `inputs: {{{slot}: STAGE}}`"
                )
            if msg and slot in named and named[slot].partition(".")[0] in removed:
                msg = None
            if msg:
                problems.append(
                    Problem(msg, f, line, col, stage=r.name, field=f"stages[{r.index}].inputs.{slot}", suggestion=hint)
                )
            r.bindings[slot] = b


TRUST_HINT = "pass --trust-code (or set RECIPE_TRUST_CODE=1) if you trust it"


def _refuse_code(resolved: list[ResolvedStage], data: LocDict, file_loc: Location, problems: list[Problem]) -> None:
    """Nothing a recipe names runs as code unless the person running it says so."""
    for r in resolved:
        for fieldname, what in r.stage_cls.runs_code(r.params).items():
            head = fieldname.split(".")[0]
            stage_params = to_plain(data)["stages"][r.index].get("params") or {}
            where = ("stages", r.index, "params", head) if head in stage_params else ("defaults", head)
            f, line, col = locate(data, where) or file_loc
            problems.append(
                Problem(
                    f"{what}: this runs code named by the recipe; {TRUST_HINT}",
                    f,
                    line,
                    col,
                    stage=r.name,
                    field=f"params.{fieldname}",
                )
            )


def _check_across_stages(
    resolved: list[ResolvedStage], data: LocDict, file_loc: Location, problems: list[Problem]
) -> None:
    """In stage order: each stage's output facts (from its inputs' facts), then
    its plugin's cross_check against its upstream outputs."""
    by_name = {r.name: r for r in resolved}
    for r in resolved:
        f, line, col = locate(data, ("stages", r.index)) or file_loc
        upstream = {
            slot: Upstream(
                b.stage, by_name[b.stage].type, by_name[b.stage].params, by_name[b.stage].facts.get(b.output, {})
            )
            for slot, b in r.bindings.items()
            if b is not None
        }
        try:
            facts = r.stage_cls.output_facts(r.params, {slot: u.facts for slot, u in upstream.items()})
            r.facts = {out: dict(facts.get(out, {})) for out in r.outputs}
            msgs = r.stage_cls.cross_check(PlanView(r.name, r.params, upstream))
        except Exception as e:  # a plugin bug must not hide as a crash
            msgs = [f"plan-time checks of plugin '{r.type}' failed: {type(e).__name__}: {e}"]
        problems.extend(Problem(m, f, line, col, stage=r.name) for m in msgs)


def _bind_explicit(
    ref: str, want: Input, upstream: list[ResolvedStage], by_name: dict[str, ResolvedStage], me: ResolvedStage
) -> tuple[Binding | None, str | None, str | None]:
    stage_name, _, out_name = ref.partition(".")
    if stage_name not in by_name:
        return None, f"input names stage '{stage_name}', which does not exist", closest(stage_name, by_name)
    src = by_name[stage_name]
    if src.index >= me.index:
        return (
            None,
            f"input names stage '{stage_name}', which runs after this one (inputs must come from earlier stages)",
            None,
        )
    if out_name:
        if out_name not in src.outputs:
            return (
                None,
                f"stage '{stage_name}' has no output '{out_name}' (it has: {', '.join(src.outputs)})",
                closest(out_name, src.outputs),
            )
        kind = src.outputs[out_name]
        if kind not in want.kinds:
            return None, f"'{stage_name}.{out_name}' is a {kind}, but this input takes {' or '.join(want.kinds)}", None
        return Binding(stage_name, out_name, kind), None, None
    matches = [(o, k) for o, k in src.outputs.items() if k in want.kinds]
    if not matches:
        return (
            None,
            (
                f"stage '{stage_name}' produces {', '.join(src.outputs.values()) or 'nothing'}, "
                f"but this input takes {' or '.join(want.kinds)}"
            ),
            None,
        )
    if len(matches) > 1:
        return (
            None,
            (
                f"stage '{stage_name}' has several outputs this input could take "
                f"({', '.join(o for o, _ in matches)}); write '{stage_name}.OUTPUT'"
            ),
            None,
        )
    return Binding(stage_name, matches[0][0], matches[0][1]), None, None


def _bind_default(want: Input, upstream: list[ResolvedStage]) -> tuple[Binding | None, None, None]:
    for u in reversed(upstream):
        for o, k in u.outputs.items():
            if k in want.kinds:
                return Binding(u.name, o, k), None, None
    return None, None, None
