"""What `recipe run` would do and why: each stage's key (known once every
input's output digest is known), whether a verified output with that key is
committed (or, with a shared cache, published there), and, when a stage must
run, what changed since the last run.  Also `recipe status` and `recipe verify`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .digests import DigestCache
from .elastic import other_world_size
from .errors import RunError
from .keys import describe_change, digest, key_parts, run_settings
from .recipe import Recipe, ResolvedStage
from .redaction import redact
from .store import RunStore

if TYPE_CHECKING:
    from .shared_cache import SharedCache

RUN, CACHED, SKIP = "run", "cached", "skip"
IN_SHARED_CACHE = "in the shared cache (pulled at run)"


@dataclass
class Selection:
    from_: str | None = None
    until: str | None = None
    only: list[str] = field(default_factory=list)
    force: list[str] = field(default_factory=list)


@dataclass
class PlanItem:
    stage: ResolvedStage
    fingerprint: str | None  # None: an input is an output not produced yet (known after its stage runs)
    parts: dict[str, Any] | None
    action: str  # run | cached | skip (outside the selection)
    reason: str
    continued_from: dict[str, Any] | None = None  # elastic: the checkpoints of another process count it continued


class Keys:
    """Stage keys, resolved in stage order: a stage's key needs the digests of
    the outputs bound to its inputs, known once their producer is committed."""

    def __init__(self, recipe: Recipe, store: RunStore, cache: DigestCache):
        self.recipe, self.store, self.cache = recipe, store, cache
        self.outputs: dict[str, dict[str, str] | None] = {}  # stage -> {output: digest}; None = not yet known

    def parts(self, stage: ResolvedStage) -> dict[str, Any] | None:
        inputs: dict[str, str | None] = {}
        for slot, b in stage.bindings.items():
            if b is None:
                inputs[slot] = None
                continue
            produced = self.outputs.get(b.stage)
            if produced is None or b.output not in produced:
                return None
            inputs[slot] = produced[b.output]
        return key_parts(self.recipe, stage, inputs, self.cache)

    def learn(self, name: str, record: dict[str, Any] | None) -> None:
        """A stage's committed record (or None: its outputs are not known yet)."""
        self.outputs[name] = None if record is None else RunStore.output_digests(record)

    def learn_digests(self, name: str, digests: dict[str, str] | None) -> None:
        """A stage's output digests known without its record (a shared cache entry's marker)."""
        self.outputs[name] = digests


def in_shared(shared: SharedCache | None, key: str | None) -> tuple[bool, dict[str, str] | None]:
    """Whether the shared cache has a complete entry for ``key``, and its
    outputs' digests (from the entry's marker: nothing is downloaded)."""
    if shared is None or key is None:
        return False, None
    marker = shared.marker(key)
    if marker is None:
        return False, None
    return True, shared.output_digests(key, marker)


def stage_key(parts: dict[str, Any] | None) -> str | None:
    return digest(parts) if parts is not None else None


def _check_names(recipe: Recipe, names: list[str | None]) -> None:
    for n in names:
        if n is not None:
            try:
                recipe.stage(n)
            except KeyError as e:
                raise RunError(e.args[0]) from None


def selected_names(recipe: Recipe, sel: Selection) -> set[str]:
    _check_names(recipe, [sel.from_, sel.until, *sel.only, *sel.force])
    names = [s.name for s in recipe.stages]
    lo = names.index(sel.from_) if sel.from_ else 0
    hi = names.index(sel.until) if sel.until else len(names) - 1
    return set(sel.only) if sel.only else set(names[lo : hi + 1])


def plan(
    recipe: Recipe,
    store: RunStore,
    sel: Selection | None = None,
    cache: DigestCache | None = None,
    shared: SharedCache | None = None,
) -> list[PlanItem]:
    """The plan in stage order (keys of stages downstream of one that must run
    are computed again when the run reaches them: identical upstream bytes
    leave them cached).  With a ``shared`` cache, a stage that would run but
    whose key has a complete entry there is shown cached (the run pulls it);
    its outputs' digests, from the entry's marker, key the stages after it."""
    sel = sel or Selection()
    selected = selected_names(recipe, sel)
    keys = Keys(recipe, store, cache or store.digest_cache())
    previous = {s["name"]: s for s in (store.read_manifest() or {}).get("stages", [])}
    items: list[PlanItem] = []
    for s in recipe.stages:
        parts = keys.parts(s)
        key = stage_key(parts)
        record = store.committed(s.name, key) if key else None
        found, digests = False, None
        if s.name not in selected:
            action, reason = SKIP, "not selected" + ("" if record else " (no output yet)")
        elif s.name in sel.force:
            action, reason = RUN, "forced"
        elif record is not None:
            action, reason = CACHED, _cached_reason(s, previous.get(s.name))
        else:
            found, digests = in_shared(shared, key)
            action, reason = (CACHED, IN_SHARED_CACHE) if found else (RUN, "")
            reason = reason or why(s, parts, key, previous.get(s.name), store, recipe.secrets)
        if found:
            keys.learn_digests(s.name, digests)
        else:
            keys.learn(s.name, record if action != RUN else None)
        if action == RUN:
            _require_inputs(s, items)
        items.append(PlanItem(s, key, parts, action, reason))
    return items


def _require_inputs(stage: ResolvedStage, items: list[PlanItem]) -> None:
    by_name = {i.stage.name: i for i in items}
    for b in stage.bindings.values():
        if b is None:
            continue
        up = by_name[b.stage]
        if up.action == SKIP and up.reason.endswith("(no output yet)"):
            raise RunError(
                f"stage '{stage.name}' needs the output of '{b.stage}', which has not been run "
                f"with the current parameters; run it first (drop --from/--only, or use --from {b.stage})"
            )


def _cached_reason(stage: ResolvedStage, prev: dict[str, Any] | None) -> str:
    if prev and prev.get("run_settings") is not None and prev["run_settings"] != run_settings(stage.params):
        return "cached (run settings differ)"
    return "cached"


def why(
    stage: ResolvedStage,
    parts: dict[str, Any] | None,
    key: str | None,
    prev: dict[str, Any] | None,
    store: RunStore,
    secrets: frozenset[str] = frozenset(),
) -> str:
    """Why a stage must run, naming what changed (``prev`` holds redacted parts)."""
    if key is None:
        ups = sorted({b.stage for b in stage.bindings.values() if b is not None})
        return f"after {', '.join(ups)} (cached if its output is unchanged)"
    if store.checkpoint_has_state(stage.name, key):
        return "resume (interrupted)"
    if stage.launch is not None and stage.launch.elastic and parts is not None:
        found = other_world_size(store.checkpoint_dir(stage.name, key), stage.name, parts, stage.params)
        if found is not None:
            return f"continue the {found[1]['world_size']}-process run's checkpoints (elastic)"
    if store.corrupt.get(stage.name):
        return f"cached output corrupt ({store.corrupt[stage.name]})"
    if prev is None or not prev.get("parts"):
        return "new"
    if prev.get("fingerprint") == key:
        return "retry (failed last time)" if prev.get("status") == "failed" else "not finished"
    changes = describe_change(prev["parts"], redact(parts, secrets) or {})
    return "; ".join(changes[:3]) + (f" (+{len(changes) - 3} more)" if len(changes) > 3 else "") or "changed"


def status(recipe: Recipe, store: RunStore, shared: SharedCache | None = None) -> dict[str, Any]:
    """The run's state for ``recipe status``: per stage pending/running/done/
    failed/interrupted, whether the last run reused it, key, artifact, seconds,
    metrics, and (``shared``) whether a stage not done here has a complete
    entry in the shared cache.  Reads only: never takes the run lock."""
    keys = Keys(recipe, store, store.digest_cache(writable=False))
    prev = {s["name"]: s for s in (store.read_manifest() or {}).get("stages", [])}
    holder = store.lock_holder()
    stages = []
    for s in recipe.stages:
        key = stage_key(keys.parts(s))
        record = store.committed(s.name, key) if key else None
        found, digests = in_shared(shared, key) if record is None else (False, None)
        if found:
            keys.learn_digests(s.name, digests)
        else:
            keys.learn(s.name, record)
        entry = _status_entry(s, key, record, prev.get(s.name, {}), store, holder)
        entry["shared"] = found
        stages.append(entry)
    return {"recipe": recipe.name, "run_dir": str(store.root), "stages": stages}


def _status_entry(
    s: ResolvedStage,
    key: str | None,
    record: dict[str, Any] | None,
    last: dict[str, Any],
    store: RunStore,
    holder: dict[str, Any] | None,
) -> dict[str, Any]:
    same = key is not None and last.get("fingerprint") == key
    entry: dict[str, Any] = {
        "name": s.name,
        "type": s.type,
        "status": "pending",
        "cached": bool(same and last.get("cached")),
        "fingerprint": key,
        "artifact": None,
        "seconds": None,
        "metrics": {},
    }
    if record is not None:
        entry.update(status="done", seconds=record.get("seconds"), metrics=record.get("metrics", {}))
        entry["artifact"] = store.artifact_paths(s.name, key or "", record)
    elif same and last.get("status") == "running":
        entry["status"] = "running" if holder else "interrupted"
        if not holder:
            entry["error"] = "interrupted (the run ended without finishing this stage)"
    elif same and last.get("status") in ("failed", "interrupted"):
        entry.update(status=last["status"], error=last.get("error"), metrics=last.get("metrics", {}))
    return entry


@dataclass
class Verification:
    checked: int = 0  # committed stage outputs verified
    shared: int = 0  # shared cache entries verified
    problems: list[str] = field(default_factory=list)  # one per corrupt file


def verify_run(recipe: Recipe, workdir: str | Path, shared: SharedCache | None = None) -> Verification:
    """Full content check of every committed output under the recipe's current
    keys and, with ``shared``, of the shared cache's entries for those keys."""
    store = RunStore(workdir, recipe.name)
    keys = Keys(recipe, store, store.digest_cache(writable=False))
    v = Verification()
    for s in recipe.stages:
        key = stage_key(keys.parts(s))
        record = store.committed(s.name, key) if key else None
        if record is None and key and s.name in store.corrupt:
            v.problems.append(store.corrupt[s.name])
        if record is not None and key:
            v.checked += 1
            v.problems += store.verify(s.name, key, record, full=True)
        found, digests = in_shared(shared, key)
        if found and shared is not None and key:
            v.shared += 1
            v.problems += shared.verify(key) or []
        if record is None and found:
            keys.learn_digests(s.name, digests)
        else:
            keys.learn(s.name, record)
    return v
