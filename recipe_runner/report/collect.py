"""Everything a report shows, gathered from a run directory into one
JSON-able structure (:class:`RunReport`).

The engine knows no stage, so the report reads conventions, not plugins:

- the run's ``manifest.json`` (stages, status, cached or ran, seconds, metrics)
  and each committed ``stage.json`` (output kinds and paths);
- training histories next to a stage's outputs: ``trainer_history.json`` (a
  list of logged dicts with ``step``), ``ppo_history.jsonl`` (one per line) or
  a Trainer's ``trainer_state.json`` (its ``log_history``); without one, the
  ``loss_curve`` / ``eval_curve`` metrics;
- ``report.json`` of every ``eval_report`` output (metrics, samples, judge);
- document counts in the metrics of data stages (``documents_in``,
  ``documents_out``, ``removed.<filter>``, ``reasons.<filter>.<reason>``,
  ``documents.<source>``);
- ``<quantity>_before`` / ``<quantity>_after`` metric pairs (quantization,
  PPO's reward) and ``samples`` metrics (lists of text dicts).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..store import STAGE_RECORD, RunStore

if TYPE_CHECKING:
    from ..recipe import Recipe

#: history files, most specific first: a stage's first match is its history
HISTORY_FILES = ("trainer_history.json", "ppo_history.jsonl", "trainer_state.json")
#: logged keys that are not curves (bookkeeping of the Trainer's log entries)
NOT_CURVES = frozenset({"step", "epoch", "total_flos", "train_loss"})
NOT_CURVE_SUFFIXES = ("_runtime", "_per_second")
#: judge verdict rows shown per eval stage (the full table is in its report directory)
MAX_JUDGE_ROWS = 50


class ReportError(Exception):
    """Nothing to report (no run directory, no manifest)."""


@dataclass
class StageView:
    """One stage of the run as the report shows it."""

    name: str
    type: str
    status: str  # done | pending | running | failed | interrupted
    cached: bool  # this run reused an earlier output
    seconds: float | None  # how long building its output took
    reason: str
    fingerprint: str | None
    inputs: dict[str, str]  # slot -> "stage.output"
    metrics: dict[str, Any]
    error: str | None = None
    directory: str | None = None  # the committed output directory
    changed: bool = False  # the recipe as it is now gives this stage another key: `recipe run` rebuilds it


@dataclass
class Curve:
    """One logged quantity of one stage: [step, value] points in step order."""

    stage: str
    metric: str
    points: list[list[float]]


@dataclass
class FunnelStep:
    label: str
    documents: int  # documents left after this step
    removed: int
    detail: dict[str, int] = field(default_factory=dict)  # reasons / per-source counts


@dataclass
class Funnel:
    """Documents in and out of one data stage, step by step."""

    stage: str
    type: str
    documents_in: int
    steps: list[FunnelStep]


@dataclass
class EvalResult:
    """What an ``eval_report`` output holds."""

    stage: str
    metrics: dict[str, Any]  # flat metrics, stderr values left out
    stderr: dict[str, float]  # metric -> its standard error
    judge_metrics: dict[str, Any] = field(default_factory=dict)
    judge_rows: list[dict[str, Any]] = field(default_factory=list)
    judge_rows_total: int = 0


@dataclass
class BeforeAfter:
    """A stage that measured quantities before and after its work (quantize: size,
    perplexity; ppo: reward): rows of (quantity, before, after) and other facts."""

    stage: str
    type: str
    rows: list[tuple[str, Any, Any]]
    facts: dict[str, Any]


@dataclass
class Sample:
    """One sample text of a stage: its fields (prompt, completion, before, after...)."""

    stage: str
    fields: dict[str, str]


@dataclass
class RecipeInfo:
    name: str
    description: str
    seed: int | None
    file: str
    text: str  # the recipe file as written (or the resolved recipe when the file is gone)
    resolved: dict[str, Any]  # every stage's parameters, defaults included


@dataclass
class RunReport:
    run_dir: str
    status: str
    started: str | None
    finished: str | None
    versions: dict[str, str]
    recipe: RecipeInfo
    stages: list[StageView]
    curves: list[Curve] = field(default_factory=list)
    funnels: list[Funnel] = field(default_factory=list)
    evals: list[EvalResult] = field(default_factory=list)
    before_after: list[BeforeAfter] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.recipe.name

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = asdict(self)
        return out


# ------------------------------------------------------------------ entry points


def collect_run(run_dir: str | Path) -> RunReport:
    """The report of a run directory (``WORKDIR/<recipe name>``), from its manifest."""
    root = Path(run_dir).resolve()
    store = RunStore(root.parent, root.name)
    manifest = store.read_manifest()
    if manifest is None:
        raise ReportError(f"{root}: no manifest.json: not a run directory (run `recipe run RECIPE` first)")
    resolved = manifest.get("resolved_recipe") or {"name": manifest.get("recipe", root.name), "stages": []}
    inputs = {s["name"]: dict(s.get("inputs", {})) for s in resolved.get("stages", [])}
    views = [stage_view(e, inputs.get(e["name"], {}), e.get("reason") or "") for e in manifest.get("stages", [])]
    recipe = _recipe_info(resolved, manifest.get("recipe_file") or "")
    return _assemble(store, manifest, recipe, views)


def collect_recipe(recipe: Recipe, workdir: str | Path) -> RunReport:
    """The report of the last run of ``recipe`` under ``workdir``, each stage
    marked ``changed`` where the recipe as it is now (after ``--set``) gives it
    another key than that run did: what ``recipe run`` would build again."""
    from ..planning import status

    store = RunStore(workdir, recipe.name)
    report = collect_run(store.root)
    current = {e["name"]: e for e in status(recipe, store)["stages"]}
    for view in report.stages:
        view.changed = view.name not in current or current[view.name]["fingerprint"] != view.fingerprint
    ran = {v.name for v in report.stages}
    for stage in recipe.stages:  # stages added to the recipe since the run
        if stage.name not in ran:
            inputs = {slot: f"{b.stage}.{b.output}" for slot, b in stage.bindings.items() if b is not None}
            report.stages.append(stage_view(current[stage.name], inputs, "added since this run"))
            report.stages[-1].changed = True
    return report


# ------------------------------------------------------------------ stages


def stage_view(entry: dict[str, Any], inputs: dict[str, str], reason: str) -> StageView:
    """A stage from a manifest entry or a ``recipe status`` entry (the same keys)."""
    return StageView(
        name=entry["name"],
        type=entry.get("type", "?"),
        status=entry.get("status", "pending"),
        cached=bool(entry.get("cached")),
        seconds=entry.get("seconds"),
        reason=reason,
        fingerprint=entry.get("fingerprint"),
        inputs=inputs,
        metrics=dict(entry.get("metrics") or {}),
        error=entry.get("error"),
    )


def _recipe_info(resolved: dict[str, Any], file: str) -> RecipeInfo:
    import yaml

    path = Path(file) if file else None
    try:
        text = path.read_text(encoding="utf-8") if path is not None else ""
    except OSError:
        text = ""
    if not text:
        text = yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True, width=100)
    return RecipeInfo(
        name=str(resolved.get("name", "")),
        description=str(resolved.get("description", "")).strip(),
        seed=resolved.get("seed"),
        file=file,
        text=text,
        resolved=resolved,
    )


def _assemble(store: RunStore, manifest: dict[str, Any], recipe: RecipeInfo, views: list[StageView]) -> RunReport:
    report = RunReport(
        run_dir=str(store.root),
        status=manifest.get("status", "?"),
        started=manifest.get("started"),
        finished=manifest.get("finished"),
        versions=dict(manifest.get("versions") or {}),
        recipe=recipe,
        stages=views,
    )
    for view in views:
        record = committed_record(store, view)
        if record is not None and view.fingerprint:
            view.directory = str(store.committed_dir(view.name, view.fingerprint))
        _add_stage_sections(report, view, record)
    return report


def committed_record(store: RunStore, view: StageView) -> dict[str, Any] | None:
    """The ``stage.json`` of the stage's committed output under its key (read as
    it is: a report shows what is there, ``recipe verify`` checks it)."""
    if not view.fingerprint or view.status != "done":
        return None
    try:
        record: dict[str, Any] = json.loads(
            (store.committed_dir(view.name, view.fingerprint) / STAGE_RECORD).read_text()
        )
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("fingerprint") == view.fingerprint else None


def _add_stage_sections(report: RunReport, view: StageView, record: dict[str, Any] | None) -> None:
    """Whatever this stage contributes: curves, a funnel, eval tables, before/after rows, samples."""
    stage_dir = Path(view.directory) if view.directory else None
    if stage_dir is not None and record is not None:
        report.curves += stage_curves(view, stage_dir, record)
        for out in record.get("outputs", {}).values():
            if out.get("kind") == "eval_report":
                report.evals.append(eval_result(view.name, stage_dir / out["path"], report.samples))
    elif view.metrics:
        report.curves += metric_curves(view.name, view.metrics)
    funnel = stage_funnel(view)
    if funnel is not None:
        report.funnels.append(funnel)
    comparison = before_after(view)
    if comparison is not None:
        report.before_after.append(comparison)
    report.samples += metric_samples(view)


# ------------------------------------------------------------------ training curves


def stage_curves(view: StageView, stage_dir: Path, record: dict[str, Any]) -> list[Curve]:
    """The curves of a stage's training history (see the module docstring)."""
    history = read_history(stage_dir / "outputs")
    if history:
        return history_curves(view.name, history)
    return metric_curves(view.name, view.metrics)


def read_history(outputs: Path) -> list[dict[str, Any]]:
    """The first history file found under a stage's outputs (see ``HISTORY_FILES``)."""
    for name in HISTORY_FILES:
        for path in sorted(outputs.rglob(name)):
            try:
                if name.endswith(".jsonl"):
                    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            entries = data.get("log_history", []) if isinstance(data, dict) else data
            if isinstance(entries, list) and entries:
                return [e for e in entries if isinstance(e, dict)]
    return []


def is_curve_key(key: str, value: Any) -> bool:
    """A logged quantity worth a curve: a finite number, not bookkeeping."""
    finite = _is_number(value) and math.isfinite(value)
    return finite and key not in NOT_CURVES and not key.endswith(NOT_CURVE_SUFFIXES)


def history_curves(stage: str, history: list[dict[str, Any]]) -> list[Curve]:
    """One curve per logged quantity: [step, value] in step order, the last
    value kept where a step was logged twice (a final evaluation)."""
    by_metric: dict[str, dict[float, float]] = {}
    for entry in history:
        step = entry.get("step")
        if not isinstance(step, (int, float)):
            continue
        for key, value in entry.items():
            if is_curve_key(key, value):
                by_metric.setdefault(key, {})[step] = value
    return [Curve(stage, metric, [[s, v] for s, v in sorted(points.items())]) for metric, points in by_metric.items()]


def metric_curves(stage: str, metrics: dict[str, Any]) -> list[Curve]:
    """``loss_curve`` ([step, loss]) and ``eval_curve`` ([step, loss, ...]) metrics as curves."""
    curves = []
    for key, metric in (("loss_curve", "loss"), ("eval_curve", "eval_loss")):
        points = metrics.get(key)
        if isinstance(points, list) and points:
            curves.append(Curve(stage, metric, [[p[0], p[1]] for p in points if isinstance(p, list) and len(p) > 1]))
    return curves


# ------------------------------------------------------------------ data funnels


def _ints(metrics: dict[str, Any], prefix: str) -> dict[str, int]:
    """The integer metrics under ``prefix`` (prefix stripped), in the order the stage wrote them."""
    return {
        k[len(prefix) :]: v
        for k, v in metrics.items()
        if k.startswith(prefix) and isinstance(v, int) and not isinstance(v, bool)
    }


def stage_funnel(view: StageView) -> Funnel | None:
    """Documents in and out of a data stage: per source read, per filter removed."""
    m = view.metrics
    sources = _ints(m, "documents.")
    if sources:
        total = sum(sources.values())
        return Funnel(view.name, view.type, total, [FunnelStep("read", total, 0, sources)])
    if not isinstance(m.get("documents_in"), int) or not isinstance(m.get("documents_out"), int):
        return None
    documents, steps = m["documents_in"], []
    for name, removed in _ints(m, "removed.").items():
        documents -= removed
        steps.append(FunnelStep(name, documents, removed, _ints(m, f"reasons.{name}.")))
    if documents != m["documents_out"] or not steps:
        detail = {k: v for k, v in _ints(m, "").items() if "duplicate" in k}
        steps.append(FunnelStep(view.type, m["documents_out"], documents - m["documents_out"], detail))
    return Funnel(view.name, view.type, m["documents_in"], steps)


# ------------------------------------------------------------------ eval reports, before/after, samples


def eval_result(stage: str, report_dir: Path, samples: list[Sample]) -> EvalResult:
    """An eval report's metrics and judge table; its samples appended to ``samples``."""
    path = report_dir if report_dir.is_file() else report_dir / "report.json"
    try:
        report: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        report = {}
    flat = dict(report.get("metrics") or {})
    result = EvalResult(
        stage=stage,
        metrics={k: v for k, v in flat.items() if not k.endswith("_stderr")},
        stderr={k[: -len("_stderr")]: v for k, v in flat.items() if k.endswith("_stderr")},
    )
    for s in report.get("samples") or []:
        if isinstance(s, dict):
            samples.append(Sample(stage, {k: str(v) for k, v in s.items()}))
    judge = report.get("judge")
    if isinstance(judge, dict):
        result.judge_metrics = dict(judge.get("metrics") or {})
        rows = _read_jsonl(path.parent / str((judge.get("table") or {}).get("jsonl", "judge.jsonl")))
        result.judge_rows, result.judge_rows_total = rows[:MAX_JUDGE_ROWS], len(rows)
    return result


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [row for row in (json.loads(line) for line in lines if line.strip()) if isinstance(row, dict)]


def measured_pairs(metrics: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(quantity, value before, value after) of each ``X_before`` / ``X_after`` metric pair."""
    return [
        (key[: -len("_before")], before, metrics[key[: -len("_before")] + "_after"])
        for key, before in metrics.items()
        if key.endswith("_before") and key[: -len("_before")] + "_after" in metrics
    ]


def before_after(view: StageView) -> BeforeAfter | None:
    """Numbers measured before and after a stage's work (``X_before`` / ``X_after``,
    ``source_size_bytes`` / ``size_bytes``) with the stage's other scalar facts."""
    m = view.metrics
    rows: list[tuple[str, Any, Any]] = []
    if isinstance(m.get("source_size_bytes"), int) and isinstance(m.get("size_bytes"), int):
        rows.append(("size_bytes", m["source_size_bytes"], m["size_bytes"]))
    rows += [(q, x, y) for q, x, y in measured_pairs(m) if _is_number(x) and _is_number(y)]
    if not rows:
        return None
    facts = {
        k: v
        for k, v in m.items()
        if not k.endswith(("_before", "_after", "size_bytes")) and k != "prompt" and _is_fact(v)
    }
    return BeforeAfter(view.name, view.type, rows, facts)


def _is_fact(value: Any) -> bool:
    """A number or a short text (a method name, a file name)."""
    return _is_number(value) or (isinstance(value, str) and len(value) < 80)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metric_samples(view: StageView) -> list[Sample]:
    """Text samples a stage kept in its metrics: ``samples`` (a list of dicts)
    and text ``X_before`` / ``X_after`` pairs (with the ``prompt``)."""
    m = view.metrics
    out = [Sample(view.name, {k: str(v) for k, v in s.items()}) for s in m.get("samples") or [] if isinstance(s, dict)]
    prompt = {"prompt": m["prompt"]} if isinstance(m.get("prompt"), str) else {}
    for quantity, before, after in measured_pairs(m):
        if isinstance(before, str) and isinstance(after, str):
            out.append(Sample(view.name, {**prompt, f"{quantity} before": before, f"{quantity} after": after}))
    return out
