"""Documentation and schema generated from the plugins' parameter models:
`recipe stages NAME`, `recipe schema` (schemas/recipe.schema.json) and
docs/stages.md all come from here."""

from __future__ import annotations

import json
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .recipe import RecipeSpec, StageSpec
from .registry import PluginError, Registry, default_registry
from .stage import Stage


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return type_name(typing.get_args(tp)[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def params_rows(model: type[BaseModel]) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, f in model.model_fields.items():
        if f.is_required():
            default = "(required)"
        elif f.default_factory is not None:
            try:
                default = json.dumps(f.default_factory(), default=str)  # type: ignore[call-arg]
            except TypeError:
                default = "(computed)"
        elif f.default is PydanticUndefined:
            default = ""
        elif isinstance(f.default, BaseModel):
            default = json.dumps(f.default.model_dump(mode="json"))
        else:
            default = json.dumps(f.default, default=str)
        rows.append((name, type_name(f.annotation), default, f.description or ""))
    return rows


#: a string holding a ``${...}`` reference (vars, paths, env), valid wherever a value goes since the
#: recipe loader substitutes it before the parameters are checked; or ``null``, which in a recipe that
#: ``extends:`` another deletes the inherited key (the merged recipe is then checked as usual)
VAR_REF = {
    "anyOf": [
        {
            "type": "string",
            "pattern": r"\$\{[^}]+\}",
            "description": "a ${vars.NAME} / ${paths.NAME} / ${env.NAME} reference, substituted before validation",
        },
        {"type": "null", "description": "under extends: delete the inherited key"},
    ]
}


_VAR_REF = {"$ref": "#/$defs/VarRef"}


def _or_var_ref(sub: Any) -> Any:
    """A sub-schema that also accepts a ``${...}`` reference."""
    return sub if sub == _VAR_REF else {"anyOf": [sub, _VAR_REF]}


def _allow_refs(node: Any) -> Any:
    """Let every property, array item and mapping value of a JSON schema also
    be a ``${...}`` reference (editors would otherwise flag valid recipes)."""
    if isinstance(node, list):
        return [_allow_refs(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _allow_refs(v) for k, v in node.items()}
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: _or_var_ref(v) for k, v in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = _or_var_ref(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _or_var_ref(out["additionalProperties"])
    return out


def recipe_json_schema(registry: Registry | None = None) -> dict[str, Any]:
    """JSON Schema of a recipe; each stage entry's `params` is checked against
    its plugin's parameter model (selected by `type`)."""
    registry = registry or default_registry()
    base = RecipeSpec.model_json_schema()
    stage_base = StageSpec.model_json_schema()
    variants = []
    defs: dict[str, Any] = {}
    for name in registry.names():
        try:
            cls = registry.load(name)
        except PluginError:
            continue
        ps = cls.Params.model_json_schema(ref_template="#/$defs/{model}")
        defs.update({k: _allow_refs(v) for k, v in ps.pop("$defs", {}).items()})
        ps = _allow_refs(ps)
        entry = json.loads(json.dumps(stage_base))
        entry.pop("title", None)
        entry["properties"]["type"] = {"const": name, "description": (cls.description or "")[:200]}
        entry["properties"]["params"] = ps
        entry["required"] = ["type"]
        entry["title"] = f"stage {name}"
        variants.append(entry)
    variants.append(
        {
            "title": "removal of a base stage",
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "remove"],
            "properties": {
                "name": stage_base["properties"]["name"],
                "remove": {"const": True, "description": stage_base["properties"]["remove"].get("description", "")},
            },
        }
    )
    base["properties"]["stages"] = {"type": "array", "minItems": 1, "description": "ordered list of stages"}
    # a recipe that extends: another patches its base's stages by name: its entries are partial
    # (checked by the engine after the merge); a standalone recipe's entries are complete stages
    patch = {"type": "object", "properties": {"name": {"type": "string"}, "type": {"type": "string"}}}
    base["if"] = {"required": ["extends"]}
    base["then"] = {"properties": {"stages": {"items": patch}}}
    base["else"] = {"properties": {"stages": {"items": {"oneOf": variants}}}}
    base["$defs"] = {**base.get("$defs", {}), **defs}
    base["$defs"].pop("StageSpec", None)
    base["$defs"]["VarRef"] = VAR_REF
    base["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    base["title"] = "recipe-runner recipe"
    return base


def stages_markdown(registry: Registry | None = None) -> str:
    """docs/stages.md: every built-in and installed stage with its parameters."""
    registry = registry or default_registry()
    out = [
        "# Stage reference",
        "",
        "Generated by `python -m recipe_runner.docs` from the plugins' parameter models "
        "(the same text `recipe stages NAME` prints). Do not edit by hand.",
        "",
    ]
    for name in registry.names():
        try:
            cls = registry.load(name)
        except PluginError as e:
            out += [f"## `{name}`", "", f"(failed to load: {e})", ""]
            continue
        if cls.name != name:
            out += [f"## `{name}`", "", f"Alias of [`{cls.name}`](#{cls.name}).", ""]
            continue
        out += _stage_section(name, cls)
    return "\n".join(out)


def _stage_section(name: str, cls: type[Stage[Any]]) -> list[str]:
    desc = cls.description or (cls.__doc__ or "").strip()
    out = [f"## `{name}`", "", desc, ""]
    p = None
    if not any(f.is_required() for f in cls.Params.model_fields.values()):
        p = cls.Params()
    ins = cls.input_slots(p) if p is not None else cls.inputs
    outs = cls.output_slots(p) if p is not None else cls.outputs
    if ins:
        slots = (f"`{k}` ({' or '.join(v.kinds)}{', optional' if v.optional else ''})" for k, v in ins.items())
        out.append("Inputs: " + ", ".join(slots) + "  ")
    if outs:
        out.append("Outputs (with default parameters): " + ", ".join(f"`{k}` ({v})" for k, v in outs.items()))
    out += ["", *_fields_table(cls.Params, "parameter")]
    for m in _nested_models(cls.Params):
        title = f"**{m.__name__}**" + (f": {m.__doc__.strip().splitlines()[0]}" if m.__doc__ else "")
        out += ["", title, "", *_fields_table(m, "field")]
    out.append("")
    return out


def _fields_table(model: type[BaseModel], header: str) -> list[str]:
    lines = [f"| {header} | type | default | description |", "|---|---|---|---|"]
    for name, type_, default, description in params_rows(model):
        cells = (f"`{name}`", f"`{type_}`", f"`{default}`" if default else "", description)
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return lines


def _nested_models(model: type[BaseModel]) -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []

    def walk(tp: Any) -> None:
        for a in typing.get_args(tp) or ():
            walk(a)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and tp not in seen and tp is not model:
            seen.append(tp)
            for f in tp.model_fields.values():
                walk(f.annotation)

    for f in model.model_fields.values():
        walk(f.annotation)
    return seen


if __name__ == "__main__":
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    builtin = Registry(distribution="recipe-runner")
    (root / "docs" / "stages.md").write_text(stages_markdown(builtin))
    (root / "schemas" / "recipe.schema.json").write_text(
        json.dumps(recipe_json_schema(builtin), indent=2, sort_keys=True) + "\n"
    )
    print("wrote docs/stages.md and schemas/recipe.schema.json", file=sys.stderr)
