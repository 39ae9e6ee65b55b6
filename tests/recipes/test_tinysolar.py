"""The TinySolar recipes: all three validate offline with the intended wiring;
the offline one runs end to end through `recipe run`, and again with a SIGKILL
in the middle of its continued pretraining then a resume, and both runs export
bit-identical weights (slow: ~3-5 minutes on 2 cores)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recipe_runner.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_recipes_validate_with_the_course_wiring():
    local = load_recipe(RECIPES / "tinysolar_upscale.yaml")
    stages = {s.name: s for s in local.stages}
    up = stages["upscale"]
    assert up.type == "scale" and [list(s) for s in up.params.layer_slices] == [[0, 8], [4, 12]]
    assert up.bindings["model"].stage == "pretrain_base"
    assert stages["pretrain_upscaled"].bindings["model"].stage == "upscale"
    assert stages["base_init"].bindings["tokenizer"].stage == "tokenize"
    assert stages["base_init"].params.config["num_hidden_layers"] == 12
    assert stages["export"].bindings["report"].stage == "eval"
    assert any(t.name == "truthfulqa_mc2_local" for t in stages["eval"].params.tasks)

    hub = {s.name: s for s in load_recipe(RECIPES / "tinysolar_upscale_hub.yaml").stages}
    assert hub["upscale"].params.from_pretrained == "upstage/TinySolar-248m-4k"
    assert hub["tokenize"].params.tokenizer == "upstage/SOLAR-10.7B-v1.0"
    assert hub["pretrain"].params.learning_rate == 5e-5 and hub["pack"].params.max_seq_length == 32
    assert hub["eval"].params.tasks[0].name == "truthfulqa_mc2"

    vs = {s.name: s for s in load_recipe(RECIPES / "upscale_vs_scratch.yaml").stages}
    tokens = {
        n: vs[n].params.max_steps * vs[n].params.per_device_train_batch_size
        for n in ("pretrain_upscaled", "pretrain_scratch")
    }
    assert tokens["pretrain_upscaled"] == tokens["pretrain_scratch"]  # the same token budget
    assert vs["scratch_init"].params.config["num_hidden_layers"] == 16
    assert "model" not in vs["scratch_init"].bindings or vs["scratch_init"].bindings["model"] is None


ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "COLUMNS": "80",
}


def _run_cmd(workdir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "recipe_runner.cli",
        "run",
        str(RECIPES / "tinysolar_upscale.yaml"),
        "--workdir",
        str(workdir),
    ]


def _manifest_stages(workdir: Path) -> dict[str, dict]:
    manifest = json.loads((workdir / "tinysolar-upscale" / "manifest.json").read_text())
    return {s["name"]: s for s in manifest["stages"]}


def _exported_weights_digest(workdir: Path) -> str:
    export = Path(_manifest_stages(workdir)["export"]["artifact"])
    return hashlib.sha256((export / "model.safetensors").read_bytes()).hexdigest()


def _run_killed_in_stage_then_resume(workdir: Path, stage_log: str, marker: str) -> None:
    """Start the run, SIGKILL it once ``marker`` appears in the stage's log, then run it again to the end."""
    proc = subprocess.Popen(_run_cmd(workdir), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = workdir / "tinysolar-upscale" / "logs" / f"{stage_log}.log"
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and marker in log.read_text():
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(_run_cmd(workdir), env=ENV, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resume (interrupted)" in resumed.stderr + resumed.stdout


@pytest.mark.slow
def test_tinysolar_upscale_runs_end_to_end_and_reproducibly(tmp_path):
    first, cache = tmp_path / "first", tmp_path / "team-cache"
    t = time.perf_counter()
    proc = subprocess.run(
        [*_run_cmd(first), "--cache", str(cache)], env=ENV, capture_output=True, text=True, timeout=900
    )
    first_seconds = time.perf_counter() - t
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_the_console_is_quiet(proc.stdout + proc.stderr)
    by_name = _manifest_stages(first)
    assert all(s["status"] == "done" for s in by_name.values())
    assert by_name["upscale"]["metrics"]["num_layers"] == 16
    base, cont = by_name["pretrain_base"]["metrics"], by_name["pretrain_upscaled"]["metrics"]
    assert cont["eval_loss"] < base["eval_loss"] < base["first_train_loss"]
    ev = by_name["eval"]["metrics"]
    assert 0 <= ev["truthfulqa_mc2_local/acc"] <= 1 and ev["perplexity"] > 1
    export = Path(by_name["export"]["artifact"])
    assert (export / "README.md").is_file() and (export / "model.safetensors").is_file()

    samples = (export / "README.md").read_text()
    assert "Sample generations" in samples and "I am an engineer. I love" in samples  # the eval samples, in the card

    _a_second_team_runs_no_stage(tmp_path, cache, first_seconds)
    _a_cached_rerun_costs_under_a_second_and_verifies(first)

    # the same recipe again, killed after its continued pretraining saved a checkpoint (step 50 of 100)
    # and resumed: the exported weights are identical to the bit
    second = tmp_path / "second"
    _run_killed_in_stage_then_resume(second, "pretrain_upscaled", "step 60:")
    assert _exported_weights_digest(second) == _exported_weights_digest(first)

    # issue #14's done-when: the same recipe with both pretraining stages in 2 processes (gloo on CPU), the
    # data and init stages reused from the first run, every other stage run once
    two = ["--set", "launch.processes=2"]
    proc = subprocess.run(_run_cmd(first) + two, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = subprocess.run(
        [
            *_run_cmd(first)[:3],
            "status",
            str(RECIPES / "tinysolar_upscale.yaml"),
            "--workdir",
            str(first),
            "--json",
            *two,
        ],
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    stages = {s["name"]: s for s in json.loads(status.stdout)["stages"]}
    assert all(s["status"] == "done" for s in stages.values())
    assert {n: s["metrics"].get("world_size") for n, s in stages.items() if "world_size" in s["metrics"]} == {
        "pretrain_base": 2,
        "pretrain_upscaled": 2,
    }
    assert stages["tokenize"]["cached"] and stages["base_init"]["cached"]


def _check_the_console_is_quiet(output: str) -> None:
    """The default recipe's non-TTY console: at most 80 lines, the summary table within 80 columns."""
    lines = output.splitlines()
    assert len(lines) <= 80, f"{len(lines)} console lines:\n" + output
    title = next(i for i, line in enumerate(lines) if line.strip() == "recipe tinysolar-upscale")
    end = next(i for i, line in enumerate(lines) if line.startswith("run directory: "))
    table = lines[title:end]
    assert len(table) >= 15 and max(len(line) for line in table) <= 80, "\n".join(table)
    assert "global_step=200" in "\n".join(table)  # whole key=value items, never a number cut in two


def _a_second_team_runs_no_stage(tmp_path: Path, cache: Path, first_seconds: float) -> None:
    """Another checkout of the recipes (another path), another work dir, other run settings, the
    shared cache: every stage is pulled, none runs, in under 5% of the first run's time."""
    import shutil

    elsewhere = tmp_path / "elsewhere" / "recipes"
    shutil.copytree(RECIPES, elsewhere)
    cmd = [
        sys.executable,
        "-m",
        "recipe_runner.cli",
        "run",
        str(elsewhere / "tinysolar_upscale.yaml"),
        "--workdir",
        str(tmp_path / "team-b"),
        "--cache",
        str(cache),
        "--set",
        "defaults.cpu_threads=2",
        "--set",
        "stages.filter.params.num_proc=1",
    ]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "running [" not in output and output.count("cached [pulled from the shared cache]") == 13, output
    assert seconds < 0.05 * first_seconds, (seconds, first_seconds)


def _a_cached_rerun_costs_under_a_second_and_verifies(workdir: Path) -> None:
    proc = subprocess.run(_run_cmd(workdir), env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    overhead = float((proc.stdout + proc.stderr).split("runner overhead: ")[1].split("s")[0])
    assert overhead < 1.0
    verify = subprocess.run(
        [*_run_cmd(workdir)[:3], "verify", str(RECIPES / "tinysolar_upscale.yaml"), "--workdir", str(workdir)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
