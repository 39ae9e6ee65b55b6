"""The runner: runs the planned stages in order, each under its key (computed
again when the run reaches it, so identical upstream bytes leave it cached),
commits each output atomically with the digests of its files, and records
everything in the run manifest.  It knows no stage: it only talks to the
Stage API."""

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
from .capture import library_output_to, summarize
from .digests import DigestCache
from .elastic import adopt_other_world_size, record_checkpoint_key
from .errors import RunError
from .keys import run_settings
from .launch import LaunchSpec
from .planning import CACHED, RUN, SKIP, Keys, PlanItem, Selection, plan, stage_key
from .planning import status as run_status
from .recipe import Recipe, ResolvedStage
from .redaction import RedactSecrets, redact
from .shared_cache import SharedCache
from .stage import Lineage, Params, ProgressSink, Stage, StageContext, StageError, StageRef, UpstreamRecord
from .store import RunStore, under_launcher
from .tracking import Tracking

log = logging.getLogger("recipe_runner")


@dataclass
class RunResult:
    ok: bool
    manifest: dict[str, Any]
    failed_stage: str | None = None
    error: str | None = None
    runner_seconds: float = 0.0
    stage_seconds: float = 0.0
    pushed: list[str] = field(default_factory=list)  # stages pushed to the shared cache


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
        shared_cache: SharedCache | None = None,
        quiet_libraries: bool = False,
    ):
        self.recipe = recipe
        self.store = RunStore(workdir, recipe.name)
        self.progress_sink = progress_sink
        self.on_event = on_event or (lambda event, data: None)
        self.shared_cache = shared_cache
        self.quiet_libraries = quiet_libraries  # library output of a running stage goes to its log file
        self.tracking = Tracking(recipe.tracking, recipe.name, self.store.root) if recipe.tracking else None
        self.digests: DigestCache | None = None

    def plan(self, sel: Selection | None = None) -> list[PlanItem]:
        return plan(self.recipe, self.store, sel, self.digests)

    def run(self, sel: Selection | None = None) -> RunResult:
        t0 = time.perf_counter()
        with self.store.lock() as lock:
            if lock.took_over and lock.took_over.get("pid"):
                log.info(
                    "took over the lock of an earlier run that ended without releasing it (pid %s)",
                    lock.took_over.get("pid"),
                )
            self.digests = self.store.digest_cache()
            items = self.plan(sel)
            manifest = self._new_manifest(items)
            self.store.write_manifest(manifest)
            result = RunResult(True, manifest)
            old_term = signal.signal(signal.SIGTERM, _on_term) if _main_thread() else None
            try:
                self._run_items(items, sel or Selection(), manifest, result)
                manifest["status"] = "done" if result.ok else "failed"
            except KeyboardInterrupt:
                manifest["status"] = "interrupted"
                raise
            except BaseException:
                manifest["status"] = "failed"
                raise
            finally:
                if old_term is not None:
                    signal.signal(signal.SIGTERM, old_term)
                result.runner_seconds = time.perf_counter() - t0 - result.stage_seconds
                manifest["finished"] = _now()
                manifest["runner_seconds"] = round(result.runner_seconds, 3)
                self.store.write_manifest(manifest)
                self.digests.save()
        return result

    def _run_items(self, items: list[PlanItem], sel: Selection, manifest: dict[str, Any], result: RunResult) -> None:
        assert self.digests is not None
        keys = Keys(self.recipe, self.store, self.digests)
        for item in items:
            entry = _entry(manifest, item.stage.name)
            if item.action == RUN:
                self._rekey(item, keys, entry, forced=item.stage.name in sel.force)
            if item.action != RUN:
                keys.learn(item.stage.name, self.store.committed(item.stage.name, item.fingerprint or ""))
                self.on_event("skip" if item.action == SKIP else "cached", {"item": item, "entry": entry})
                continue
            forced = item.stage.name in sel.force and item.fingerprint and not self.store.rank
            if forced and self.store.clear_checkpoints(item.stage.name, item.fingerprint or ""):
                log.info("stage %s: --force: its in-stage checkpoints were cleared", item.stage.name)
            self.on_event("start", {"item": item, "entry": entry})
            ok, seconds = self._run_stage(item, manifest, entry, bool(forced))
            result.stage_seconds += seconds
            self.on_event("end", {"item": item, "entry": entry})
            if not ok:
                result.ok, result.failed_stage, result.error = False, item.stage.name, entry.get("error")
                return
            keys.learn(item.stage.name, self.store.committed(item.stage.name, item.fingerprint or ""))
            if self._push(item):
                result.pushed.append(item.stage.name)

    def _rekey(self, item: PlanItem, keys: Keys, entry: dict[str, Any], forced: bool) -> None:
        """The stage's key now that its inputs exist; a committed (or shared)
        output with that key is reused instead of running the stage."""
        if item.fingerprint is None:
            item.parts = keys.parts(item.stage)
            item.fingerprint = stage_key(item.parts)
            entry.update(fingerprint=item.fingerprint, parts=redact(item.parts, self.recipe.secrets))
            if item.fingerprint is None:
                raise RunError(f"stage '{item.stage.name}': an input's output is missing after its stage ran")
            if not forced and self.store.committed(item.stage.name, item.fingerprint) is not None:
                item.action, item.reason = CACHED, "cached (upstream output unchanged)"
        if item.action == RUN and not forced and self._pull(item):
            item.action, item.reason = CACHED, "pulled from the shared cache"
        if item.action == CACHED:
            rec = self.store.committed(item.stage.name, item.fingerprint)
            assert rec is not None
            entry.update(status="done", cached=True, **self._record_view(item.stage.name, item.fingerprint, rec))

    def _pull(self, item: PlanItem) -> bool:
        if self.shared_cache is None or item.fingerprint is None:
            return False
        return self.shared_cache.pull(self.store, item.stage.name, item.fingerprint)

    def _push(self, item: PlanItem) -> bool:
        if self.shared_cache is None or item.fingerprint is None or self.store.rank:
            return False
        if item.continued_from:
            log.info(
                "stage %s: not pushed to the shared cache: it continued from another process count's "
                "checkpoints (elastic), so a fresh run under its key would give other bytes",
                item.stage.name,
            )
            return False
        return self.shared_cache.push(self.store, item.stage.name, item.fingerprint)

    def _note_checkpoint_key(self, item: PlanItem, ckpt: Path, elastic: bool) -> None:
        """Record the key of the stage's checkpoint dir; with ``launch.elastic``,
        an empty one first continues another process count's checkpoints."""
        if self.store.rank or item.parts is None or item.fingerprint is None:
            return
        launch = item.stage.launch
        if elastic and launch is not None and launch.elastic:
            item.continued_from = adopt_other_world_size(ckpt, item.stage.name, item.parts, item.stage.params)
        record_checkpoint_key(ckpt, item.fingerprint, item.parts, item.stage.params)

    def _new_manifest(self, items: list[PlanItem]) -> dict[str, Any]:
        previous = {s["name"]: s for s in (self.store.read_manifest() or {}).get("stages", [])}
        stages = []
        for it in items:
            s = it.stage
            rec = self.store.committed(s.name, it.fingerprint) if it.fingerprint else None
            entry: dict[str, Any] = {
                "name": s.name,
                "type": s.type,
                "fingerprint": it.fingerprint,
                "parts": redact(it.parts, self.recipe.secrets),
                "run_settings": run_settings(s.params),
                "status": "done" if rec else "pending",
                "cached": it.action == CACHED,
                "reason": it.reason,
                "artifact": None,
                "seconds": None,
                "metrics": {},
            }
            if rec and it.fingerprint:
                entry.update(self._record_view(s.name, it.fingerprint, rec))
            elif it.action == SKIP and s.name in previous:
                prev = previous[s.name]
                if prev.get("fingerprint") == it.fingerprint and prev.get("status") in ("failed", "interrupted"):
                    entry.update(status=prev["status"], error=prev.get("error"))
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
        return {
            "artifact": self.store.artifact_paths(name, fp, rec),
            "seconds": rec.get("seconds"),
            "metrics": rec.get("metrics", {}),
        }

    def _lineage(self, item: PlanItem, manifest: dict[str, Any]) -> Lineage:
        ancestors = self._ancestors(item.stage)
        return Lineage(
            recipe=self.recipe.name,
            recipe_file=str(self.recipe.file),
            seed=self.recipe.seed,
            stage=StageRef(item.stage.name, item.stage.type, item.fingerprint or ""),
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

    def _inputs(self, item: PlanItem, manifest: dict[str, Any]) -> dict[str, Artifact | None]:
        out: dict[str, Artifact | None] = {}
        for slot, b in item.stage.bindings.items():
            if b is None:
                out[slot] = None
            else:
                producer_key: str = _entry(manifest, b.stage)["fingerprint"]
                out[slot] = self.store.outputs(b.stage, producer_key)[b.output]
        return out

    def _local_signatures(self, item: PlanItem) -> dict[str, list[list[int]]]:
        """Stat signatures of the local files a stage's parameters name (checked again at commit)."""
        from .digests import stat_signature, walk_files

        out = {}
        for name, path in item.stage.stage_cls.local_inputs(item.stage.params).items():
            p = Path(path)
            out[name] = [stat_signature(f) for f in walk_files(p)] if p.exists() else []
        return out

    def _run_stage(
        self, item: PlanItem, manifest: dict[str, Any], entry: dict[str, Any], forced: bool = False
    ) -> tuple[bool, float]:
        """Run one stage and commit its outputs; a failure is recorded in the
        manifest entry (and a Ctrl-C / SIGTERM re-raised after recording it)."""
        s = item.stage
        assert item.fingerprint is not None
        tmp, ckpt = self.store.prepare(s.name, item.fingerprint)
        self._note_checkpoint_key(item, ckpt, elastic=not forced)
        resumed = any(ckpt.iterdir())
        local_before = self._local_signatures(item)
        entry.update(status="running", cached=False, started=_now(), error=None)
        self.store.write_manifest(manifest)
        t = time.perf_counter()
        with self._stage_log(s.name) as stage_log:
            ctx = self._context(item, manifest, tmp, ckpt, stage_log, resumed)
            try:
                if self.tracking is not None and not self.store.rank:
                    config = self.recipe.stage_params_json(s)
                    ctx.tracker = self.tracking.open(s.name, s.type, ckpt, config)
                ctx.inputs = self._inputs(item, manifest)
                self._say_where_it_starts(item, ctx)
                returned = self._call_stage(s, ctx, item)
                outputs = collect_outputs(s.stage_cls, s.params, ctx, returned)
                self._check_unchanged(item, local_before)
                self._commit(item, tmp, outputs, ctx.metrics, time.perf_counter() - t, resumed, entry)
            except (Exception, KeyboardInterrupt, _Interrupted) as e:
                seconds = time.perf_counter() - t
                self._record_failure(e, ctx, entry, seconds)
                self.store.write_manifest(manifest)
                if isinstance(e, (KeyboardInterrupt, _Interrupted)):
                    raise KeyboardInterrupt(entry["error"]) from None
                return False, seconds
            finally:
                if ctx.tracker is not None:
                    ctx.tracker.finish(_jsonable(ctx.metrics), failed=entry["status"] in ("failed", "interrupted"))
        self.store.write_manifest(manifest)
        return True, time.perf_counter() - t

    def _context(
        self, item: PlanItem, manifest: dict[str, Any], tmp: Path, ckpt: Path, log: logging.Logger, resumed: bool
    ) -> StageContext[Any]:
        s = item.stage
        return StageContext(
            name=s.name,
            params=s.params,
            inputs={},
            output_dir=tmp / "outputs",
            checkpoint_dir=ckpt,
            seed=self.recipe.seed,
            log=log,
            resumed=resumed,
            recipe_name=self.recipe.name,
            lineage=self._lineage(item, manifest),
            progress_sink=self.progress_sink,
        )

    @staticmethod
    def _say_where_it_starts(item: PlanItem, ctx: StageContext[Any]) -> None:
        """A log line when the stage continues checkpoints (its own, or another process count's)."""
        if item.continued_from:
            ctx.log.info(
                "elastic: continuing from the checkpoints of the %s-process run (%s)",
                item.continued_from["world_size"],
                item.continued_from["from"],
            )
            ctx.metrics["continued_from_processes"] = item.continued_from["world_size"]
        elif ctx.resumed:
            ctx.log.info("resuming: in-stage checkpoints found in %s", ctx.checkpoint_dir)

    def _record_failure(self, e: BaseException, ctx: StageContext[Any], entry: dict[str, Any], seconds: float) -> None:
        msg = _failure_message(e)
        ctx.log.error("stage failed: %s", msg)
        ctx.log.debug("%s", traceback.format_exc())
        entry.update(
            status="interrupted" if isinstance(e, (KeyboardInterrupt, _Interrupted)) else "failed",
            error=msg,
            seconds=round(seconds, 3),
            finished=_now(),
            metrics=_jsonable(ctx.metrics),
            log=str(self.store.logs_dir / f"{ctx.name}.log"),
        )

    @contextmanager
    def _stage_log(self, name: str) -> Iterator[logging.Logger]:
        """The stage's logger, writing to ``logs/<stage>.log`` while the stage runs."""
        self.store.logs_dir.mkdir(parents=True, exist_ok=True)
        stage_log = logging.getLogger(f"recipe_runner.stage.{name}")
        fh = logging.FileHandler(self.store.logs_dir / f"{name}.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
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
            "parts": redact(item.parts, self.recipe.secrets),
            "resumed": resumed,
            "continued_from": item.continued_from,
        }
        assert item.fingerprint is not None
        self.store.commit(s.name, item.fingerprint, tmp, record)
        view = self._record_view(s.name, item.fingerprint, record)
        entry.update(
            status="done",
            seconds=record["seconds"],
            finished=record["finished"],
            artifact=view["artifact"],
            metrics=view["metrics"],
        )

    def _call_stage(self, s: ResolvedStage, ctx: StageContext[Any], item: PlanItem) -> Mapping[str, Artifact]:
        if s.launch is not None and s.launch.needs_launcher() and not under_launcher():
            return self._launch(s, s.launch, ctx, item)
        ctx.launch = s.launch
        if not self.quiet_libraries:
            return s.stage_cls().run(ctx) or {}
        log_file = self.store.logs_dir / f"{s.name}.log"
        try:
            with library_output_to(log_file) as captured:
                return s.stage_cls().run(ctx) or {}
        finally:
            summary = summarize(captured, " recipe_runner.")
            if summary:
                ctx.log.info("%s went to %s", summary, log_file)

    def _launch(self, s: ResolvedStage, spec: LaunchSpec, ctx: StageContext[Any], item: PlanItem) -> dict[str, Any]:
        """Run the stage in ``spec.world_size()`` processes (see :mod:`recipe_runner.launcher`)."""
        from .launcher import DistributedLaunch

        assert ctx.lineage is not None and item.fingerprint is not None
        reason = spec.cannot_start()
        if reason is not None:
            raise StageError(reason)
        job = {
            "recipe_file": str(self.recipe.file.resolve()),
            "overrides": list(self.recipe.overrides),
            "trust_code": self.recipe.trust_code,
            "stage": s.name,
            "checkpoint": str(ctx.checkpoint_dir),
            "resumed": ctx.resumed,
            "inputs": {k: None if a is None else a.to_json() for k, a in ctx.inputs.items()},
            "lineage": ctx.lineage.to_json(),
        }
        tmp = ctx.output_dir.parent
        return DistributedLaunch(ctx, spec, job, tmp, self.store.logs_dir).run()

    def _check_unchanged(self, item: PlanItem, before: dict[str, list[list[int]]]) -> None:
        after = self._local_signatures(item)
        changed = [f for f in before if before[f] != after.get(f)]
        if changed:
            paths = item.stage.stage_cls.local_inputs(item.stage.params)
            raise StageError(
                f"the local input {changed[0]} ({paths[changed[0]]}) changed while the stage ran; its output "
                "would be committed under the key of the old content, so nothing was committed: run again"
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
    """`recipe status`: see :func:`recipe_runner.planning.status` (reads only, never locks)."""
    return run_status(recipe, RunStore(workdir, recipe.name))
