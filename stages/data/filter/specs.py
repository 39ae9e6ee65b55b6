"""The entries of the ``filters`` list: each a mapping with a ``type``,
validated by the ``Options`` model of the filter registered under that type.

For the generated reference (docs/stages.md, the recipe JSON schema) the
entry is the discriminated union of the built-in filters' options, so what
is documented does not depend on which plugins are installed; validation
goes through the registry, so a plugin's filter is validated exactly like a
built-in one, with located errors and a did-you-mean for an unknown type or
option."""

from __future__ import annotations

import difflib
import functools
import operator
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, SerializeAsAny, ValidationError, ValidatorFunctionWrapHandler, WrapValidator
from pydantic_core import InitErrorDetails, PydanticCustomError

from .base import FilterOptions
from .registry import FilterRegistryError, builtin_filters, load_filter


def validate_filter(value: Any, handler: ValidatorFunctionWrapHandler) -> FilterOptions:
    """One entry of the list: the options of the filter its ``type`` names."""
    if isinstance(value, FilterOptions):
        return value
    if not (isinstance(value, Mapping) and isinstance(value.get("type"), str)):
        return handler(value)  # pydantic's own message for a missing or mistyped 'type'
    name = value["type"]
    try:
        options_model = load_filter(name).Options
    except FilterRegistryError as e:
        raise _type_error(str(e), name) from None
    if options_model in _BUILTIN_OPTIONS:
        result: FilterOptions = handler(value)
        return result
    try:
        return options_model.model_validate(value)
    except ValidationError as e:
        raise ValidationError.from_exception_data(
            "filter options", [_plugin_error(name, options_model, err) for err in e.errors()]
        ) from None


def _plugin_error(name: str, model: type[FilterOptions], err: Any) -> InitErrorDetails:
    """A plugin filter's option error, at the key it is about (pydantic puts a
    built-in filter's under its tag, which the recipe does not have), with a
    did-you-mean for an unknown key."""
    loc = tuple(err["loc"])
    if err["type"] != "extra_forbidden":
        return InitErrorDetails(type=err["type"], loc=loc, input=err["input"], ctx=err.get("ctx", {}))
    key = str(err["loc"][-1])
    hint = difflib.get_close_matches(key, [f for f in model.model_fields if f != "type"], n=1, cutoff=0.6)
    message = "unknown key '{key}' of filter '{name}'" + (" (did you mean '{hint}'?)" if hint else "")
    ctx = {"key": key, "name": name, "hint": hint[0] if hint else ""}
    return InitErrorDetails(
        type=PydanticCustomError("extra_forbidden_option", message, ctx), loc=loc, input=err["input"]
    )


def _type_error(reason: str, name: str) -> ValidationError:
    """An error at the entry's ``type`` key."""
    error = PydanticCustomError("filter_type", "{reason}", {"reason": reason})
    return ValidationError.from_exception_data("filter", [InitErrorDetails(type=error, loc=("type",), input=name)])


def _builtin_spec(models: tuple[type[FilterOptions], ...]) -> Any:
    """The union of the built-in options models, discriminated by ``type``, validated by :func:`validate_filter`."""
    if not models:  # pragma: no cover - the project is not installed: no entry points at all
        return Annotated[FilterOptions, WrapValidator(validate_filter), SerializeAsAny()]
    union = functools.reduce(operator.or_, models)
    # a plugin's options are serialized as what they are, not as one of the built-in members
    return Annotated[union, Field(discriminator="type"), WrapValidator(validate_filter), SerializeAsAny()]


_BUILTIN_OPTIONS: tuple[type[FilterOptions], ...] = tuple(f.Options for f in builtin_filters())

if TYPE_CHECKING:
    FilterSpec = FilterOptions
else:
    FilterSpec = _builtin_spec(_BUILTIN_OPTIONS)
