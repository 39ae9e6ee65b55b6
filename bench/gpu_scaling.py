"""Multi-GPU scaling of the pretrain stage, launched by `recipe run` itself: the TinySolar-248m bf16 base
pretraining (recipes/gpu/tinysolar_248m_bf16.yaml, stage pretrain_base) in 1 process, then in N (default:
every visible GPU) with `--set launch.processes=N`, same per-device batch (so N times the global batch).
Steady tokens/s comes from each run's stage log (steps 10..last, as bench/gpu_check.py measures it); prints
the speed-up N-proc / 1-proc and the scaling efficiency (speed-up / N; the goal: >= 1.8x on 2 GPUs) and
appends a JSON line to --out.

    python bench/gpu_scaling.py                    # a machine with 2+ GPUs
    python bench/gpu_scaling.py --smoke            # 2 gloo processes on CPU, tiny model: the path, no numbers

Both runs share the data, tokenizer and init stages (cached after the first); the pretrain stage's key holds
the world size, so the N-process run trains again instead of reusing the 1-process result."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from gpu_check import SPECS, steady_tokens_per_second  # noqa: E402

RECIPE = ROOT / "recipes" / "gpu" / "tinysolar_248m_bf16.yaml"
STAGE = "pretrain_base"


def smoke_sets() -> list[str]:
    return [*SPECS["a"].smoke_set, "vars.steps=30", "defaults.device=cpu", "defaults.precision=fp32"]


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_once(processes: int, sets: list[str], workdir: Path, timeout: float) -> dict[str, Any]:
    """`recipe run --until pretrain_base` with `launch.processes`, then its status; tokens/s from the log."""
    all_sets = [*sets, f"launch.processes={processes}"]
    args = [arg for s in all_sets for arg in ("--set", s)]
    base = [sys.executable, "-m", "recipe_runner.cli"]
    t0 = time.monotonic()
    proc = subprocess.run(
        [*base, "run", str(RECIPE), "--until", STAGE, "--workdir", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"),
    )
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        return {"processes": processes, "ok": False, "error": proc.stderr[-1500:], "seconds": round(seconds, 1)}
    status = subprocess.run(
        [*base, "status", str(RECIPE), "--workdir", str(workdir), "--json", *args], capture_output=True, text=True
    )
    stage = next(s for s in json.loads(status.stdout)["stages"] if s["name"] == STAGE)
    metrics = stage["metrics"]
    log = (workdir / "gpu-tinysolar-248m-bf16" / "logs" / f"{STAGE}.log").read_text()
    tokens_per_step = float(metrics.get("tokens_per_step") or 0) or _tokens_per_step(all_sets, processes)
    steady = steady_tokens_per_second(log, tokens_per_step) or {}
    return {
        "processes": processes,
        "ok": True,
        "world_size": metrics.get("world_size", 1),
        "tokens_per_second_stage": metrics.get("tokens_per_second"),
        **steady,
        "seconds": round(seconds, 1),
    }


def _tokens_per_step(sets: list[str], processes: int) -> float:
    """Rows per device x processes x sequence length, from the recipe's vars after the --set values."""
    from recipe_runner.recipe import load_recipe

    recipe = load_recipe(RECIPE, sets)
    params = recipe.stage(STAGE).params.model_dump()
    rows = params["per_device_train_batch_size"] * params["gradient_accumulation_steps"] * processes
    return float(rows * int(recipe.vars["seq_len"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=None, help="N (default: the visible GPUs; 2 with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model, 2 gloo processes")
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "gpu_scaling")
    ap.add_argument("--out", type=Path, default=None, help="append the result as a JSON line here")
    ap.add_argument("--timeout-s", type=float, default=900.0, help="per run")
    args = ap.parse_args(argv)
    n = args.processes or (2 if args.smoke else visible_gpus())
    if n < 2:
        print(f"gpu_scaling: {n} GPU(s) visible; scaling needs 2 or more (or --smoke on CPU)")
        return 0
    sets = smoke_sets() if args.smoke else []
    one = run_once(1, sets, args.workdir, args.timeout_s)
    many = run_once(n, sets, args.workdir, args.timeout_s)
    result: dict[str, Any] = {"check": "scaling", "smoke": args.smoke, "one": one, "many": many}
    if one.get("tokens_per_second_steady") and many.get("tokens_per_second_steady"):
        speedup = many["tokens_per_second_steady"] / one["tokens_per_second_steady"]
        result.update(speedup=round(speedup, 3), efficiency=round(speedup / n, 3))
        print(
            f"gpu_scaling: {n} processes {many['tokens_per_second_steady']:,.0f} tokens/s vs 1 process "
            f"{one['tokens_per_second_steady']:,.0f}: {speedup:.2f}x ({speedup / n:.0%} scaling efficiency)"
            + (" [smoke: CPU, not a measurement]" if args.smoke else f" [goal: >= {0.9 * n:.1f}x]")
        )
    else:
        print(f"gpu_scaling: no speed-up measured: {json.dumps(result)[:2000]}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(json.dumps(result) + "\n")
    return 0 if one.get("ok") and many.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
