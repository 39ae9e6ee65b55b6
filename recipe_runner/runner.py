"""The runner: plans which stages to run, runs them in order, commits each
output atomically under its fingerprint, and records everything in the run
manifest.  It knows no stage: it only talks to the Stage API."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import Artifact
from .errors import RunError
from .fingerprint import stage_fingerprints
from .recipe import Recipe, ResolvedStage
from .redaction import RedactSecrets
from .stage import Lineage, Params, ProgressSink, Stage, StageContext, StageError, StageRef, UpstreamRecord
from .store import RunStore

log = logging.getLogger("recipe_runner")

RUN, CACHED, SKIP = "run", "cached", "skip"


@dataclass
class PlanItem:
    stage: ResolvedStage
    fingerprint: str
    params_digest: str
    inputs: dict[str, str | None]
    action: str  # run | cached | skip (outside the selection)
    reason: str


@dataclass
class Selection:
    from_: str | None = None
    until: str | None = None
    only: list[str] = field(default_factory=list)
    force: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    ok: bool
    manifest: dict[str, Any]
    failed_stage: str | None = None
    error: str | None = None
    runner_seconds: float = 0.0


def _check_names(recipe: Recipe, names: list[str | None]) -> None:
    for n in names:
        if n is not None:
            try:
                recipe.stage(n)
            except KeyError as e:
                raise RunError(e.args[0]) from None


def plan(recipe: Recipe, store: RunStore, sel: Selection | None = None) -> list[PlanItem]:
    sel = sel or Selection()
    _check_names(recipe, [sel.from_, sel.until, *sel.only, *sel.force])
    fps = stage_fingerprints(recipe)
    previous = {s["name"]: s for s in (store.read_manifest() or {}).get("stages", [])}
    names = [s.name for s in recipe.stages]
    lo = names.index(sel.from_) if sel.from_ else 0
    hi = names.index(sel.until) if sel.until else len(names) - 1
    selected = set(sel.only) if sel.only else set(names[lo : hi + 1])
    # forcing a stage re-runs everything downstream of it that is selected
    forced: set[str] = set(sel.force)
    for s in recipe.stages:
        if any(b is not None and b.stage in forced for b in s.bindings.values()):
            forced.add(s.name)

    items: list[PlanItem] = []
    will_exist: set[str] = set()
    for s in recipe.stages:
        fp = fps[s.name]
        committed = store.committed(s.name, fp["fingerprint"]) is not None
        if s.name not in selected:
            action, reason = SKIP, "not selected" + ("" if committed else " (no output yet)")
        elif s.name in forced and (s.name in sel.force or committed):
            action, reason = RUN, "forced" if s.name in sel.force else "upstream forced"
        elif committed:
            action, reason = CACHED, "cached"
        else:
            action, reason = RUN, _why(s.name, fp, previous.get(s.name), store)
        if action == RUN or committed:
            will_exist.add(s.name)
        if action == RUN:
            missing = [b.stage for b in s.bindings.values() if b is not None and b.stage not in will_exist]
            if missing:
                raise RunError(
                    f"stage '{s.name}' needs the output of '{missing[0]}', which has not been run "
                    f"with the current parameters; run it first (drop --from/--only, or use --from {missing[0]})"
                )
        items.append(PlanItem(s, fp["fingerprint"], fp["params_digest"], fp["inputs"], action, reason))
    return items


def _why(name: str, fp: dict[str, Any], prev: dict[str, Any] | None, store: RunStore) -> str:
    if store.checkpoint_has_state(name, fp["fingerprint"]):
        return "resume (interrupted)"
    if prev is None or "params_digest" not in prev:
        return "new"
    if prev.get("params_digest") != fp["params_digest"]:
        return "parameters changed"
    if prev.get("inputs") != fp["inputs"]:
        return "input changed"
    if prev.get("fingerprint") == fp["fingerprint"] and prev.get("status") == "failed":
        return "retry (failed last time)"
    return "not finished"


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in (
        "recipe-runner",
        "torch",
        "transformers",
        "datasets",
        "tokenizers",
        "accelerate",
        "peft",
        "trl",
        "lm-eval",
        "datatrove",
        "gguf",
        "pydantic",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def collect_outputs(
    stage_cls: type[Stage[Any]], params: Params, ctx: StageContext[Any], returned: Mapping[str, Artifact]
) -> dict[str, Artifact]:
    """What ``run`` returned, else each declared output at ``output_dir/<name>``;
    every declared output must exist and have its declared kind."""
    outputs: dict[str, Artifact] = {}
    for out_name, kind in stage_cls.output_slots(params).items():
        art = returned.get(out_name)
        if art is None:
            art = Artifact(kind=kind, path=ctx.output_dir / out_name)
        if art.kind != kind:
            raise StageError(f"stage returned a {art.kind!r} for output {out_name!r}, declared {kind!r}")
        if not Path(art.path).exists():
            raise StageError(f"stage did not write its output {out_name!r} ({art.path})")
        art.producer = ctx.name
        outputs[out_name] = art
    return outputs


class _Interrupted(BaseException):
    pass


def _on_term(signum: int, frame: Any) -> None:
    raise _Interrupted(f"interrupted by signal {signum}")


class Runner:
    def __init__(
        self,
        recipe: Recipe,
        workdir: str | Path = "runs",
        progress_sink: ProgressSink | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ):
        self.recipe = recipe
        self.store = RunStore(workdir, recipe.name)
        self.progress_sink = progress_sink
        self.on_event = on_event or (lambda event, data: None)

    def plan(self, sel: Selection | None = None) -> list[PlanItem]:
        return plan(self.recipe, self.store, sel)

    def run(self, sel: Selection | None = None) -> RunResult:
        t0 = time.perf_counter()
        with self.store.lock() as lock:
            if lock.took_over and lock.took_over.get("pid"):
                log.info(
                    "took over the lock of an earlier run that ended without releasing it (pid %s)",
                    lock.took_over.get("pid"),
                )
            items = self.plan(sel)
            manifest = self._new_manifest(items)
            self.store.write_manifest(manifest)
            stage_seconds = 0.0
            result = RunResult(True, manifest)
            old_term = signal.signal(signal.SIGTERM, _on_term) if _main_thread() else None
            try:
                for item in items:
                    entry = _entry(manifest, item.stage.name)
                    if item.action != RUN:
                        self.on_event("skip" if item.action == SKIP else "cached", {"item": item, "entry": entry})
                        continue
                    self.on_event("start", {"item": item, "entry": entry})
                    ok, seconds = self._run_stage(item, manifest, entry)
                    stage_seconds += seconds
                    self.on_event("end", {"item": item, "entry": entry})
                    if not ok:
                        result = RunResult(False, manifest, item.stage.name, entry.get("error"))
                        break
            finally:
                if old_term is not None:
                    signal.signal(signal.SIGTERM, old_term)
                result.runner_seconds = time.perf_counter() - t0 - stage_seconds
                manifest["finished"] = _now()
                manifest["status"] = "done" if result.ok else "failed"
                manifest["runner_seconds"] = round(result.runner_seconds, 3)
                self.store.write_manifest(manifest)
        return result

    # ------------------------------------------------------------------
    def _new_manifest(self, items: list[PlanItem]) -> dict[str, Any]:
        previous = {s["name"]: s for s in (self.store.read_manifest() or {}).get("stages", [])}
        stages = []
        for it in items:
            s = it.stage
            rec = self.store.committed(s.name, it.fingerprint)
            entry: dict[str, Any] = {
                "name": s.name,
                "type": s.type,
                "fingerprint": it.fingerprint,
                "params_digest": it.params_digest,
                "inputs": it.inputs,
                "status": "done" if rec else "pending",
                "cached": it.action == CACHED,
                "artifact": None,
                "seconds": None,
                "metrics": {},
            }
            if rec:
                entry.update(self._record_view(s.name, it.fingerprint, rec))
            elif it.action == SKIP and s.name in previous:
                prev = previous[s.name]
                if prev.get("fingerprint") == it.fingerprint and prev.get("status") == "failed":
                    entry.update(status="failed", error=prev.get("error"))
            stages.append(entry)
        return {
            "recipe": self.recipe.name,
            "recipe_file": str(self.recipe.file.resolve()),
            "run_dir": str(self.store.root),
            "started": _now(),
            "finished": None,
            "status": "running",
            "pid": os.getpid(),
            "versions": package_versions(),
            "resolved_recipe": self.recipe.resolved_dict(full=True),
            "stages": stages,
        }

    def _record_view(self, name: str, fp: str, rec: dict[str, Any]) -> dict[str, Any]:
        base = self.store.committed_dir(name, fp)
        arts = {
            k: str(base / v["path"]) if not Path(v["path"]).is_absolute() else v["path"]
            for k, v in rec.get("outputs", {}).items()
        }
        return {
            "artifact": next(iter(arts.values())) if len(arts) == 1 else arts,
            "seconds": rec.get("seconds"),
            "metrics": rec.get("metrics", {}),
        }

    def _lineage(self, item: PlanItem, manifest: dict[str, Any]) -> Lineage:
        ancestors = self._ancestors(item.stage)
        return Lineage(
            recipe=self.recipe.name,
            recipe_file=str(self.recipe.file),
            seed=self.recipe.seed,
            stage=StageRef(item.stage.name, item.stage.type, item.fingerprint),
            upstream=tuple(
                UpstreamRecord(e["name"], e["type"], e["fingerprint"], e.get("metrics", {}))
                for e in manifest["stages"]
                if e["name"] in ancestors
            ),
            versions=manifest.get("versions", {}),
        )

    def _ancestors(self, stage: ResolvedStage) -> set[str]:
        out: set[str] = set()
        todo = [b.stage for b in stage.bindings.values() if b is not None]
        while todo:
            n = todo.pop()
            if n not in out:
                out.add(n)
                todo.extend(b.stage for b in self.recipe.stage(n).bindings.values() if b is not None)
        return out

    def _inputs(self, item: PlanItem) -> dict[str, Artifact | None]:
        out: dict[str, Artifact | None] = {}
        for slot, b in item.stage.bindings.items():
            if b is None:
                out[slot] = None
                continue
            producer_fp = str(item.inputs[slot]).split(":", 1)[0]
            out[slot] = self.store.outputs(b.stage, producer_fp)[b.output]
        return out

    def _run_stage(self, item: PlanItem, manifest: dict[str, Any], entry: dict[str, Any]) -> tuple[bool, float]:
        """Run one stage and commit its outputs; a failure is recorded in the
        manifest entry (and a Ctrl-C / SIGTERM re-raised after recording it)."""
        s = item.stage
        tmp, ckpt = self.store.prepare(s.name, item.fingerprint)
        resumed = any(ckpt.iterdir())
        entry.update(status="running", cached=False, started=_now(), error=None)
        self.store.write_manifest(manifest)
        t = time.perf_counter()
        with self._stage_log(s.name) as stage_log:
            ctx: StageContext[Any] = StageContext(
                name=s.name,
                params=s.params,
                inputs={},
                output_dir=tmp / "outputs",
                checkpoint_dir=ckpt,
                seed=self.recipe.seed,
                log=stage_log,
                resumed=resumed,
                recipe_name=self.recipe.name,
                lineage=self._lineage(item, manifest),
                progress_sink=self.progress_sink,
            )
            try:
                ctx.inputs = self._inputs(item)
                if resumed:
                    stage_log.info("resuming: in-stage checkpoints found in %s", ckpt)
                returned = s.stage_cls().run(ctx) or {}
                outputs = collect_outputs(s.stage_cls, s.params, ctx, returned)
                self._commit(item, tmp, outputs, ctx.metrics, time.perf_counter() - t, resumed, entry)
            except (Exception, KeyboardInterrupt, _Interrupted) as e:
                seconds = time.perf_counter() - t
                msg = _failure_message(e)
                stage_log.error("stage failed: %s", msg)
                stage_log.debug("%s", traceback.format_exc())
                entry.update(
                    status="failed",
                    error=msg,
                    seconds=round(seconds, 3),
                    finished=_now(),
                    metrics=_jsonable(ctx.metrics),
                    log=str(self.store.logs_dir / f"{s.name}.log"),
                )
                self.store.write_manifest(manifest)
                if isinstance(e, (KeyboardInterrupt, _Interrupted)):
                    raise KeyboardInterrupt(msg) from None
                return False, seconds
        self.store.write_manifest(manifest)
        return True, time.perf_counter() - t

    @contextmanager
    def _stage_log(self, name: str) -> Iterator[logging.Logger]:
        """The stage's logger, writing to ``logs/<stage>.log`` while the stage runs."""
        self.store.logs_dir.mkdir(parents=True, exist_ok=True)
        stage_log = logging.getLogger(f"recipe_runner.stage.{name}")
        fh = logging.FileHandler(self.store.logs_dir / f"{name}.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        if self.recipe.secrets:
            fh.addFilter(RedactSecrets(self.recipe.secrets))
        stage_log.addHandler(fh)
        try:
            yield stage_log
        finally:
            stage_log.removeHandler(fh)
            fh.close()

    def _commit(
        self,
        item: PlanItem,
        tmp: Path,
        outputs: dict[str, Artifact],
        metrics: dict[str, Any],
        seconds: float,
        resumed: bool,
        entry: dict[str, Any],
    ) -> None:
        s = item.stage
        record = {
            "stage": s.name,
            "type": s.type,
            "plugin_version": s.stage_cls.version,
            "outputs": {k: a.to_json(relative_to=tmp) for k, a in outputs.items()},
            "metrics": _jsonable(metrics),
            "seconds": round(seconds, 3),
            "finished": _now(),
            "params": self.recipe.stage_params_json(s),
            "inputs": item.inputs,
            "resumed": resumed,
        }
        self.store.commit(s.name, item.fingerprint, tmp, record)
        view = self._record_view(s.name, item.fingerprint, record)
        entry.update(
            status="done",
            seconds=record["seconds"],
            finished=record["finished"],
            artifact=view["artifact"],
            metrics=view["metrics"],
        )


def _failure_message(e: BaseException) -> str:
    if isinstance(e, StageError):
        return str(e)
    if isinstance(e, (KeyboardInterrupt, _Interrupted)):
        return f"interrupted ({e or 'Ctrl-C'}); `recipe run` again resumes this stage"
    return f"{type(e).__name__}: {e}"


def _entry(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in manifest["stages"] if e["name"] == name)


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def status(recipe: Recipe, workdir: str | Path) -> dict[str, Any]:
    """The run's state for ``recipe status``: per stage pending/running/done/failed,
    whether the last run reused it, fingerprint, artifact, seconds, metrics."""
    store = RunStore(workdir, recipe.name)
    fps = stage_fingerprints(recipe)
    manifest = store.read_manifest() or {}
    prev = {s["name"]: s for s in manifest.get("stages", [])}
    holder = store.lock_holder()
    stages = []
    for s in recipe.stages:
        fp = fps[s.name]["fingerprint"]
        rec = store.committed(s.name, fp)
        last = prev.get(s.name, {})
        same = last.get("fingerprint") == fp
        entry: dict[str, Any] = {
            "name": s.name,
            "type": s.type,
            "status": "pending",
            "cached": bool(same and last.get("cached")),
            "fingerprint": fp,
            "artifact": None,
            "seconds": None,
            "metrics": {},
        }
        if rec is not None:
            base = store.committed_dir(s.name, fp)
            arts = {k: str(base / v["path"]) for k, v in rec.get("outputs", {}).items()}
            entry.update(
                status="done",
                seconds=rec.get("seconds"),
                metrics=rec.get("metrics", {}),
                artifact=next(iter(arts.values())) if len(arts) == 1 else arts,
            )
        elif same and last.get("status") == "running":
            entry["status"] = "running" if holder else "failed"
            if not holder:
                entry["error"] = "interrupted (the run ended without finishing this stage)"
        elif same and last.get("status") == "failed":
            entry.update(status="failed", error=last.get("error"), metrics=last.get("metrics", {}))
        stages.append(entry)
    return {"recipe": recipe.name, "run_dir": str(store.root), "stages": stages}
