"""The public API a stage plugin is written against.

A plugin subclasses :class:`Stage`, declares a pydantic parameter model
(subclass of :class:`Params`), the artifact kinds it consumes and produces,
and implements :meth:`Stage.run`.  The engine never imports a stage module by
name: plugins are found through the ``recipe_runner.stages`` entry-point group.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from .artifacts import Artifact
from .launch import LaunchSpec


class Params(BaseModel):
    """Base class of every stage's parameters: strict, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


@dataclass(frozen=True)
class Input:
    """An input slot: the artifact kind(s) it accepts, whether it may be absent,
    and whether it binds by itself to the latest upstream producer (``auto``)
    or only when the recipe names a stage under ``inputs:``."""

    kinds: tuple[str, ...]
    optional: bool = False
    description: str = ""
    auto: bool = True

    def __init__(self, *kinds: str, optional: bool = False, description: str = "", auto: bool = True):
        if not kinds:
            raise ValueError("Input needs at least one artifact kind")
        if not auto and not optional:
            raise ValueError("an input that does not bind automatically must be optional")
        object.__setattr__(self, "kinds", tuple(kinds))
        object.__setattr__(self, "optional", optional)
        object.__setattr__(self, "description", description)
        object.__setattr__(self, "auto", auto)


def run_setting(default: Any = ..., *, description: str = "", **kwargs: Any) -> Any:
    """A parameter field that changes only *how* a stage runs (workers, threads,
    batch sizes of inference-only work), never what it computes: it stays out of
    the stage's key, so changing it reuses cached outputs.  Use it like
    ``pydantic.Field``: ``num_proc: int = run_setting(2, description="...")``."""
    return Field(default, description=description, json_schema_extra={"run_setting": True}, **kwargs)


def per_process(default: Any = ..., *, description: str = "", **kwargs: Any) -> Any:
    """A parameter field that sets each process's share of the work (per-device
    batch, gradient accumulation): it keys the result like any parameter, and an
    elastic resume (``launch: {elastic: true}``) may change it together with the
    process count.  Use it like ``pydantic.Field``."""
    return Field(default, description=description, json_schema_extra={"per_process": True}, **kwargs)


def per_process_fields(params: BaseModel) -> list[str]:
    """The top-level fields of ``params`` declared with :func:`per_process`."""
    return [
        name
        for name, f in type(params).model_fields.items()
        if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("per_process")
    ]


P = TypeVar("P", bound=Params)

Facts = Mapping[str, Any]
"""What a stage declares, at plan time, about one of its outputs (keys such as
:data:`~recipe_runner.artifacts.SEQ_LENGTH`): downstream checks read these
instead of another plugin's parameter names."""


def is_run_setting(model: type[BaseModel], name: str) -> bool:
    extra = model.model_fields[name].json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("run_setting"))


def split_params(params: BaseModel) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(what changes results, run settings)`` of a parameter model, as JSON."""
    key: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    for name in type(params).model_fields:
        value = getattr(params, name)
        if is_run_setting(type(params), name):
            settings[name] = _as_json(value)
        elif isinstance(value, BaseModel):
            key[name], inner = split_params(value)
            if inner:
                settings[name] = inner
        elif isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
            pairs = [split_params(v) for v in value]
            key[name] = [k for k, _ in pairs]
            if any(s for _, s in pairs):
                settings[name] = [s for _, s in pairs]
        else:
            key[name] = _as_json(value)
    return key, settings


def _as_json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return json.loads(json.dumps(value, default=str)) if not isinstance(value, str | int | float | bool) else value


class Upstream(NamedTuple):
    """The producer of one bound input slot, as a ``cross_check`` sees it."""

    stage: str
    type: str
    params: Params
    facts: Facts


@dataclass
class PlanView(Generic[P]):
    """What a stage's ``cross_check`` sees at validate time: its own params and,
    for each bound input slot, the producing stage and the facts of the output
    bound there."""

    name: str
    params: P
    upstream: dict[str, Upstream] = field(default_factory=dict)


@dataclass(frozen=True)
class StageRef:
    name: str
    type: str
    fingerprint: str


@dataclass(frozen=True)
class UpstreamRecord:
    """One stage upstream of the running one: who it was and what it measured."""

    name: str
    type: str
    fingerprint: str
    metrics: Mapping[str, Any]


@dataclass(frozen=True)
class Lineage:
    """Where a stage's output comes from: the recipe, the stage, every stage
    upstream of it (first to last) and the package versions of the run."""

    recipe: str
    recipe_file: str
    seed: int
    stage: StageRef
    upstream: tuple[UpstreamRecord, ...] = ()
    versions: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "recipe_file": self.recipe_file,
            "seed": self.seed,
            "stage": {"name": self.stage.name, "type": self.stage.type, "fingerprint": self.stage.fingerprint},
            "upstream": [
                {"name": u.name, "type": u.type, "fingerprint": u.fingerprint, "metrics": dict(u.metrics)}
                for u in self.upstream
            ],
            "versions": dict(self.versions),
        }


class Progress:
    """Progress reporting handed to stages; the CLI renders it (rich bar on a
    terminal, periodic log lines otherwise)."""

    def __init__(self, sink: ProgressSink | None, description: str, total: float | None):
        self._sink = sink
        self.description = description
        self.total = total
        self.completed = 0.0

    def advance(self, amount: float = 1.0) -> None:
        self.completed += amount
        if self._sink is not None:
            self._sink.update(self)

    def update(self, completed: float) -> None:
        self.completed = completed
        if self._sink is not None:
            self._sink.update(self)


class ProgressSink:
    def start(self, progress: Progress) -> None: ...
    def update(self, progress: Progress) -> None: ...
    def stop(self, progress: Progress) -> None: ...


@dataclass
class StageContext(Generic[P]):
    """Everything a running stage gets from the runner."""

    name: str
    params: P
    inputs: dict[str, Artifact | None]
    output_dir: Path
    checkpoint_dir: Path
    seed: int
    log: logging.Logger
    metrics: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False
    recipe_name: str = ""
    lineage: Lineage | None = None
    progress_sink: ProgressSink | None = None
    tracker: Any = None  # the stage's experiment-tracker run, when the recipe has `tracking:`
    launch: LaunchSpec | None = None  # how the stage was launched (distributed stages only)

    def output_path(self, output: str) -> Path:
        """Directory where the stage writes the named output (created)."""
        path = self.output_dir / output
        path.mkdir(parents=True, exist_ok=True)
        return path

    def input(self, slot: str) -> Artifact:
        art = self.inputs.get(slot)
        if art is None:
            raise KeyError(f"stage {self.name!r} has no input {slot!r}")
        return art

    def track(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Report a point of a time series (loss, learning rate...) to the
        recipe's experiment tracker; a no-op when the recipe tracks nothing."""
        if self.tracker is not None:
            self.tracker.log(step, metrics)

    def progress(self, description: str, total: float | None = None) -> _ProgressCM:
        return _ProgressCM(Progress(self.progress_sink, description, total), self.progress_sink)


class _ProgressCM:
    def __init__(self, progress: Progress, sink: ProgressSink | None):
        self.progress, self.sink = progress, sink

    def __enter__(self) -> Progress:
        if self.sink is not None:
            self.sink.start(self.progress)
        return self.progress

    def __exit__(self, *exc: Any) -> None:
        if self.sink is not None:
            self.sink.stop(self.progress)


class Stage(Generic[P]):
    """Base class of stage plugins, generic over its parameter model:
    ``class PackStage(Stage[PackParams])`` makes ``ctx.params`` a ``PackParams``.

    Class attributes a plugin sets:

    - ``name``: its registry name (the entry-point name), e.g. ``"filter"``.
    - ``version``: bump it when the stage's behaviour changes; it is part of the
      fingerprint, so cached outputs of older versions are not reused.
    - ``Params``: its parameter model, a subclass of :class:`Params`.
    - ``inputs``: ``{slot: Input(kind, ...)}``; ``outputs``: ``{output: kind}``.
      Override :meth:`input_slots` / :meth:`output_slots` where they depend on
      the parameters.
    - ``aliases``: other registry names the same class answers to.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params
    inputs: ClassVar[Mapping[str, Input]] = {}
    outputs: ClassVar[Mapping[str, str]] = {}
    aliases: ClassVar[tuple[str, ...]] = ()
    #: True: the stage can run in several processes (``launch:``), every rank
    #: running ``run`` with the same checkpoint dir, rank 0's outputs committed;
    #: a string: why it cannot (shown when a recipe gives it a ``launch:``).
    distributed: ClassVar[bool | str] = False

    @classmethod
    def input_slots(cls, params: P) -> Mapping[str, Input]:
        return cls.inputs

    @classmethod
    def output_slots(cls, params: P) -> Mapping[str, str]:
        return cls.outputs

    @classmethod
    def fingerprint_extra(cls, params: P) -> Any:
        """Extra content the fingerprint must cover, e.g. the size and mtime of
        local files a source stage reads.  Must be cheap."""
        return None

    @classmethod
    def local_inputs(cls, params: P) -> Mapping[str, Path]:
        """Local files or directories the parameters point at (``{field path:
        path}``, field path dotted with list indices, e.g. ``"sources.0.path"``):
        their *content* is part of the stage's key instead of the path, so an
        edited tokenizer directory re-runs the stage and a moved checkout does
        not.  Paths that do not exist locally (hub ids) must be left out."""
        return {}

    @classmethod
    def runs_code(cls, params: P) -> Mapping[str, str]:
        """Parameters whose value makes this stage import or run code that the
        recipe names (a task directory with Python, ``trust_remote_code``, a
        plugin path...): ``{field: what runs}``.  The engine refuses such a
        recipe unless the person running it passes ``--trust-code``.  Code
        shipped inside installed packages is trusted as the package is: do not
        list it."""
        return {}

    @classmethod
    def output_facts(cls, params: P, inputs: Mapping[str, Facts]) -> Mapping[str, Facts]:
        """Facts known at plan time about each output (output name -> facts),
        e.g. ``{"dataset": {SEQ_LENGTH: 1024}}``.  ``inputs`` holds the facts of
        each bound input slot, so a stage can pass them through (a trained model
        keeps its input model's ``MAX_POSITIONS``)."""
        return {}

    @classmethod
    def plan_estimate(cls, view: PlanView[P], launch: LaunchSpec) -> Mapping[str, Any]:
        """What ``recipe plan`` shows for a distributed stage beside its
        processes and strategy: estimates such as memory per device and time
        per step (JSON-able values).  Must be cheap and must not import torch."""
        return {}

    @classmethod
    def cross_check(cls, view: PlanView[P]) -> list[str]:
        """Consistency checks against upstream outputs (``view.upstream[slot].facts``),
        run at validate time.  Return a list of error messages."""
        return []

    def run(self, ctx: StageContext[P]) -> Mapping[str, Artifact] | None:
        """Do the work.  Write each declared output under ``ctx.output_path(name)``
        and return ``{name: Artifact}`` (or None to take the defaults: each
        output at ``ctx.output_dir / name`` with empty metadata)."""
        raise NotImplementedError


class StageError(Exception):
    """Raised by a stage for a failure the user must fix (bad data, missing
    dependency); the runner prints the message without a traceback."""
