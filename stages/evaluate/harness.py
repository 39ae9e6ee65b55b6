"""lm-eval-harness glue for the ``eval`` stage: task presets, the project's
offline task files (recipes/tasks), and ``lm_eval.simple_evaluate`` around an
already-loaded model and tokenizer (``HFLM``), with the same arguments the
``lm_eval`` command line passes, so the numbers are the CLI's."""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

from recipe_runner import StageError

from .params import EvalParams

#: the Open LLM Leaderboard (v1) set with its few-shot counts, as the course runs it
LEADERBOARD: list[tuple[str, int]] = [
    ("arc_challenge", 25),
    ("hellaswag", 10),
    ("mmlu", 5),
    ("truthfulqa_mc2", 0),
    ("winogrande", 5),
    ("gsm8k", 5),
]
PRESETS: dict[str, list[tuple[str, int]]] = {"leaderboard": LEADERBOARD}

#: simple_evaluate's seeds (python, numpy, torch, few-shot sampling), all set to the stage's seed
_SEED_ARGUMENTS = ("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed")

#: keys of an lm-eval result entry that are not metrics
_NOT_METRICS = ("alias", "name", "sample_len", " ")

TaskGroups = dict[tuple[Any, Any], list[str]]


def local_tasks_dir() -> Path:
    """recipes/tasks, shipped as package data of ``recipe_runner_recipes``."""
    import recipe_runner_recipes

    return Path(recipe_runner_recipes.__file__).resolve().parent / "tasks"


def local_task_names() -> set[str]:
    names = set()
    for yml in local_tasks_dir().rglob("*.yaml"):
        for line in yml.read_text().splitlines():
            if line.startswith("task:"):
                names.add(line.split(":", 1)[1].strip())
    return names


def expand(specs: list[Any]) -> list[dict[str, Any]]:
    """Task specs (a name, a preset name, or {name, num_fewshot, limit}) as a
    flat list of {name, num_fewshot, limit} dicts."""
    out: list[dict[str, Any]] = []
    for spec in specs:
        if isinstance(spec, str):
            spec = {"name": spec, "num_fewshot": None, "limit": None}
        elif hasattr(spec, "model_dump"):
            spec = spec.model_dump()
        if spec["name"] in PRESETS:
            shots = spec.get("num_fewshot")
            out.extend(
                {"name": name, "num_fewshot": preset if shots is None else shots, "limit": spec.get("limit")}
                for name, preset in PRESETS[spec["name"]]
            )
        else:
            out.append({"name": spec["name"], "num_fewshot": spec.get("num_fewshot"), "limit": spec.get("limit")})
    return out


def flat_metric_name(task: str, key: str) -> str:
    """'acc,none' -> '<task>/acc'; 'exact_match,strict-match' -> '<task>/exact_match_strict-match'."""
    metric, _, filt = key.partition(",")
    return f"{task}/{metric}" if filt in ("", "none") else f"{task}/{metric}_{filt}"


def report_metric_name(key: str) -> str:
    """'acc,none' -> 'acc'; 'exact_match,strict-match' -> 'exact_match_strict-match'."""
    metric, _, filt = key.partition(",")
    return metric if key.endswith(",none") or "," not in key else f"{metric}_{filt}"


def run_tasks(
    model: Any, tokenizer: Any, p: EvalParams, *, seed: int, log: logging.Logger
) -> tuple[dict[str, float], dict[str, Any]]:
    """Run the eval stage's tasks (``p.tasks``, presets expanded) with lm-eval;
    returns (flat metrics, per-task details).  Tasks with different few-shot
    counts / limits run as separate ``simple_evaluate`` calls (lm-eval takes
    one num_fewshot per call).  Each task also reports how many of its
    requests had their prompt cut to the model's positions
    (``<task>/truncated_requests``)."""
    from .position_checked_lm import PositionCheckedLM

    specs = expand(p.tasks)
    task_manager = _task_manager(specs, p.include_path)
    device = str(next(model.parameters()).device)
    lm = PositionCheckedLM(pretrained=model, tokenizer=tokenizer, batch_size=p.batch_size, device=device)
    flat: dict[str, float] = {}
    details: dict[str, Any] = {}
    for (shots, lim), names in _task_groups(specs, p.limit).items():
        log.info("lm-eval: %s (num_fewshot=%s, limit=%s)", ", ".join(names), shots, lim)
        lm.truncated.clear()
        lm.requests.clear()
        res = _evaluate(lm, task_manager, names, _cli_arguments(shots, lim, seed, p.bootstrap_iters))
        if res is None:  # non-zero ranks in a distributed run
            continue
        for task, values in res["results"].items():
            details[task] = _task_entry(res, task, values, shots, lim, flat)
            _count_truncated(lm, task, details[task], flat, log)
    return flat, details


def _count_truncated(lm: Any, task: str, entry: dict[str, Any], flat: dict[str, float], log: logging.Logger) -> None:
    """The task's cut prompts into its report entry and the flat metrics (a
    group, which scores nothing itself, has none), and a warning when there
    are any."""
    cut, total = lm.truncated[task], lm.requests[task]
    if not total:
        return
    entry["truncated_requests"] = cut
    flat[f"{task}/truncated_requests"] = cut
    if cut:
        log.warning(
            "%s: %d of %d requests are longer than the model's %d positions; their prompts were cut from the "
            "left, as lm-eval does, so those scores see only the end of the prompt",
            task,
            cut,
            total,
            lm.max_length,
        )


def _task_manager(specs: list[dict[str, Any]], include_paths: list[str]) -> Any:
    """lm-eval's TaskManager over the shipped tasks and ``include_paths`` (the
    library's own tasks only when a spec needs them); an unknown task is a
    StageError with the closest names."""
    from lm_eval.tasks import TaskManager

    paths = [str(local_tasks_dir())] + [str(Path(p).expanduser()) for p in include_paths]
    for p in paths[1:]:
        if not Path(p).exists():
            raise StageError(f"eval: include_path {p!r} does not exist")
    local = local_task_names()
    need_defaults = any(s["name"] not in local for s in specs) or bool(include_paths)
    tm = TaskManager(include_path=paths, include_defaults=need_defaults)
    known = set(tm.all_tasks)
    for s in specs:
        if s["name"] not in known:
            close = difflib.get_close_matches(s["name"], known, n=3)
            raise StageError(
                f"eval: unknown lm-eval task {s['name']!r}"
                + (f" (did you mean {', '.join(close)}?)" if close else "")
                + f"; offline tasks shipped with the project: {', '.join(sorted(local))}"
            )
    return tm


def _task_groups(specs: list[dict[str, Any]], limit: int | float | None) -> TaskGroups:
    """Task names grouped by (num_fewshot, limit), a spec's own limit before the stage's."""
    groups: TaskGroups = {}
    for s in specs:
        lim = s["limit"] if s["limit"] is not None else limit
        groups.setdefault((s["num_fewshot"], lim), []).append(s["name"])
    return groups


def _cli_arguments(shots: Any, lim: Any, seed: int, bootstrap_iters: int) -> dict[str, Any]:
    """``simple_evaluate``'s arguments for one group, as the ``lm_eval``
    command line sets them with ``--seed`` (every random seed)."""
    seeds = dict.fromkeys(_SEED_ARGUMENTS, seed)
    return {"num_fewshot": shots, "limit": lim, "bootstrap_iters": bootstrap_iters, "log_samples": False, **seeds}


def _evaluate(lm: Any, tm: Any, names: list[str], arguments: dict[str, Any]) -> dict[str, Any] | None:
    """One ``simple_evaluate`` call; a failure is a StageError (naming the
    hub tasks when there are any)."""
    from lm_eval import simple_evaluate

    try:
        res: dict[str, Any] | None = simple_evaluate(model=lm, tasks=names, task_manager=tm, **arguments)
    except StageError:
        raise
    except Exception as e:  # dataset download failures surface as many types
        local = local_task_names()
        offline = [n for n in names if n not in local]
        hint = (
            f"; the hub tasks {offline} need network access to download their datasets (offline, use "
            f"the shipped tasks: {', '.join(sorted(local))})"
            if offline
            else ""
        )
        raise StageError(f"eval: lm-eval failed on {names}: {type(e).__name__}: {str(e)[:300]}{hint}") from None
    return res


def _task_entry(
    res: dict[str, Any], task: str, values: dict[str, Any], shots: Any, lim: Any, flat: dict[str, float]
) -> dict[str, Any]:
    """A task's report entry (few-shot count, limit, samples, metrics); its
    metrics also go into ``flat`` under their flat names.  NaN values (the
    stderr of a one-sample run) are left out."""
    entry: dict[str, Any] = {
        "num_fewshot": res.get("n-shot", {}).get(task, shots),
        "limit": lim,
        "samples": (res.get("n-samples", {}).get(task) or {}).get("effective"),
        "metrics": {},
    }
    for key, value in values.items():
        if key in _NOT_METRICS or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and value != value:
            continue
        flat[flat_metric_name(task, key)] = float(value)
        entry["metrics"][report_metric_name(key)] = float(value)
    return entry
