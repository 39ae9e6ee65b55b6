"""lm-eval-harness glue for the ``eval`` stage: task presets, the project's
offline task files (recipes/tasks), and a call of ``lm_eval.simple_evaluate``
around an already-loaded model and tokenizer (``HFLM``)."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from recipe_runner.stage import StageError

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
            for name, shots in PRESETS[spec["name"]]:
                out.append({"name": name, "num_fewshot": shots if spec.get("num_fewshot") is None
                            else spec["num_fewshot"], "limit": spec.get("limit")})
        else:
            out.append({"name": spec["name"], "num_fewshot": spec.get("num_fewshot"), "limit": spec.get("limit")})
    return out


def flat_metric_name(task: str, key: str) -> str:
    """'acc,none' -> '<task>/acc'; 'exact_match,strict-match' -> '<task>/exact_match_strict-match'."""
    metric, _, filt = key.partition(",")
    return f"{task}/{metric}" if filt in ("", "none") else f"{task}/{metric}_{filt}"


def run_tasks(model, tokenizer, specs: list[dict[str, Any]], *, limit: int | float | None, batch_size: int,
              include_paths: list[str], seed: int, log, bootstrap_iters: int = 1000,
              max_length: int | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """Run the tasks with lm-eval; returns (flat metrics, per-task details).
    Tasks with different few-shot counts / limits run as separate
    ``simple_evaluate`` calls (lm-eval takes one num_fewshot per call)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
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
            raise StageError(f"eval: unknown lm-eval task {s['name']!r}"
                             + (f" (did you mean {', '.join(close)}?)" if close else "")
                             + f"; offline tasks shipped with the project: {', '.join(sorted(local))}")

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
              device=str(next(model.parameters()).device))
    groups: dict[tuple[Any, Any], list[str]] = {}
    for s in specs:
        lim = s["limit"] if s["limit"] is not None else limit
        groups.setdefault((s["num_fewshot"], lim), []).append(s["name"])

    flat: dict[str, float] = {}
    details: dict[str, Any] = {}
    for (shots, lim), names in groups.items():
        log.info("lm-eval: %s (num_fewshot=%s, limit=%s)", ", ".join(names), shots, lim)
        try:
            res = simple_evaluate(model=lm, tasks=names, num_fewshot=shots, limit=lim, task_manager=tm,
                                  log_samples=False, bootstrap_iters=bootstrap_iters, random_seed=seed,
                                  numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
        except StageError:
            raise
        except Exception as e:  # dataset download failures surface as many types
            offline = [n for n in names if n not in local]
            hint = (f"; the hub tasks {offline} need network access to download their datasets (offline, use "
                    f"the shipped tasks: {', '.join(sorted(local))})" if offline else "")
            raise StageError(f"eval: lm-eval failed on {names}: {type(e).__name__}: {str(e)[:300]}{hint}") from None
        if res is None:  # non-zero ranks in a distributed run
            continue
        for task, values in res["results"].items():
            entry = {"num_fewshot": res.get("n-shot", {}).get(task, shots), "limit": lim,
                     "samples": (res.get("n-samples", {}).get(task) or {}).get("effective"), "metrics": {}}
            for key, value in values.items():
                if key in ("alias", "name", "sample_len", " ") or not isinstance(value, (int, float)):
                    continue
                if isinstance(value, float) and value != value:  # NaN stderr of a 1-sample run
                    continue
                flat[flat_metric_name(task, key)] = float(value)
                entry["metrics"][key.partition(",")[0] + ("" if key.endswith(",none") or "," not in key
                                                         else "_" + key.partition(",")[2])] = float(value)
            details[task] = entry
    return flat, details
