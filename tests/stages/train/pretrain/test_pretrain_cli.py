"""pretrain through `recipe run RECIPE --workdir WD`, as users run it, on a
small data-to-pretrain recipe (source, tokenize, pack, init, pretrain): data
tokenized with another tokenizer than the model's is refused before any
training, a diverging run stops naming the step and keeps its last good
checkpoint, a SIGKILL while a checkpoint is being written is recovered from;
each asserted on the exit code, the message, `recipe status --json`, what is
committed, and the next run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

DATA_STAGES = ("source", "tokenize", "pack", "init")


def _run(recipe_cli, recipe: Path, workdir: Path, *extra: str) -> tuple[int, str]:
    proc = recipe_cli("run", str(recipe), "--workdir", str(workdir), *extra)
    return proc.returncode, proc.stdout + proc.stderr


def _committed(workdir: Path, stage: str) -> list[Path]:
    return list((workdir / "tiny-pretrain" / "stages").glob(f"{stage}-*"))


def _checkpoints(workdir: Path) -> dict[int, Path]:
    found = (workdir / "tiny-pretrain" / "checkpoints").glob("pretrain-*/checkpoint-*")
    return {int(p.name.split("-")[1]): p for p in found}


def test_data_of_another_tokenizer_is_refused_and_the_named_fix_works(
    tiny_recipe, recipe_cli, status_json, shakespeare_tokenizer_dir, tmp_path
):
    """init given another tokenizer of the same vocabulary size (512) than the one tokenize trained:
    exit 1 naming both digests and the fix, nothing trained; with init taking the tokenize stage's
    tokenizer (its `tokenizer` input), the data stages are reused and the model trains."""
    recipe = tiny_recipe({"max_steps": 2}, init={"tokenizer": str(shakespeare_tokenizer_dir)})
    wd = tmp_path / "runs"
    rc, out = _run(recipe_cli, recipe, wd)
    assert rc == 1, out
    message = re.search(
        r"stage 'pretrain' failed: pretrain: the packed dataset \(from stage 'pack'\) was tokenized with tokenizer "
        r"([0-9a-f]{12}) \(vocabulary 512\), but the model \(from stage 'init'\) carries tokenizer ([0-9a-f]{12}) "
        r"\(vocabulary 512\)",
        out,
    )
    assert message and message.group(1) != message.group(2), out
    assert "the init stage's `tokenizer` parameter" in out and "Traceback" not in out
    st = status_json(recipe, wd)
    assert [st[s]["status"] for s in DATA_STAGES] == ["done"] * 4
    assert st["pretrain"]["status"] == "failed" and "was tokenized with tokenizer" in st["pretrain"]["error"]
    assert not _committed(wd, "pretrain") and not _checkpoints(wd)

    fix = ("--set", "stages.init.params.tokenizer=null")
    rc, out = _run(recipe_cli, recipe, wd, *fix)
    assert rc == 0, out
    st = status_json(recipe, wd, *fix)
    assert [st[s]["cached"] for s in ("source", "tokenize", "pack")] == [True] * 3
    assert st["init"]["status"] == st["pretrain"]["status"] == "done" and not st["init"]["cached"]
    assert st["pretrain"]["metrics"]["global_step"] == 2


def test_a_diverging_run_fails_naming_the_step_and_the_next_run_resumes_before_it(
    tiny_recipe, recipe_cli, status_json, tmp_path
):
    """A learning rate that overflows the weights (zero on step 1 by the warmup, 1e38 after): exit 1
    naming the step, nothing committed, the checkpoint before it kept; the same command again reuses
    the data stages, resumes from that checkpoint and stops at the same step; a sane learning rate
    (another key) trains to the end."""
    from safetensors.torch import load_file

    params = {"max_steps": 10, "learning_rate": 1e38, "warmup_steps": 1000, "max_grad_norm": 0}
    recipe = tiny_recipe({**params, "logging_steps": 1, "save_steps": 1, "save_total_limit": 5})
    wd = tmp_path / "runs"
    rc, out = _run(recipe_cli, recipe, wd)
    assert rc == 1, out
    found = re.search(r"stage 'pretrain' failed: pretrain: training diverged (?:at|by) step (\d+)", out)
    assert found, out
    step = int(found.group(1))
    assert 1 < step < 10 and "nothing committed" in out and "Traceback" not in out
    assert str(wd / "tiny-pretrain" / "logs" / "pretrain.log") in out  # where the traceback is
    st = status_json(recipe, wd)
    assert [st[s]["status"] for s in DATA_STAGES] == ["done"] * 4
    assert st["pretrain"]["status"] == "failed" and f"step {step}" in st["pretrain"]["error"]
    assert not _committed(wd, "pretrain")
    kept = _checkpoints(wd)
    assert max(kept) == step - 1
    weights = load_file(str(kept[step - 1] / "model.safetensors"))
    assert all(bool(w.isfinite().all()) for w in weights.values())

    rc, out = _run(recipe_cli, recipe, wd)
    assert rc == 1 and re.search(rf"training diverged (?:at|by) step {step} ", out), out
    st = status_json(recipe, wd)
    assert [st[s]["cached"] for s in DATA_STAGES] == [True] * 4
    log = (wd / "tiny-pretrain" / "logs" / "pretrain.log").read_text()
    assert f"pretrain resumes at step {step - 1} of 10" in log

    sane = ("--set", "stages.pretrain.params.learning_rate=0.003")
    rc, out = _run(recipe_cli, recipe, wd, *sane)
    assert rc == 0, out
    st = status_json(recipe, wd, *sane)
    assert st["pretrain"]["status"] == "done" and st["pretrain"]["metrics"]["global_step"] == 10
    assert [st[s]["cached"] for s in DATA_STAGES] == [True] * 4


def _kill_while_saving(proc: subprocess.Popen, workdir: Path, timeout: float = 240) -> str | None:
    """SIGKILL the `recipe run` at an instant a checkpoint dir (past step 5)
    exists without its trainer_state.json (the Trainer is mid-save); the
    dir's name, None when the run ended or timed out first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for step, path in _checkpoints(workdir).items():
            if step > 5 and not (path / "trainer_state.json").exists():
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return path.name if path.exists() else None
        time.sleep(0.001)
    proc.wait()
    return None


def _run_cmd(recipe: Path, workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "recipe_runner.cli", "run", str(recipe), "--workdir", str(workdir), *extra]


def _weights(status: dict) -> bytes:
    return (Path(status["pretrain"]["artifact"]) / "model.safetensors").read_bytes()


def test_a_kill_while_a_checkpoint_is_saved_is_recovered_by_the_next_run(
    tiny_recipe, recipe_cli, status_json, tmp_path
):
    """`recipe run` SIGKILLed while the Trainer writes checkpoint-N: status says interrupted, nothing
    is committed; the next run sets checkpoint-N aside, resumes from the previous complete one and
    ends with the weights of an uninterrupted run, bit for bit."""
    recipe = tiny_recipe({"max_steps": 40, "save_steps": 5, "save_total_limit": 2, "learning_rate": 0.003})
    wd = tmp_path / "killed"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    killed_in = None
    for attempt in range(3):  # the save window is short: when the run outpaced the poll, train again from scratch
        extra = ("--force", "pretrain") if attempt else ()
        proc = subprocess.Popen(
            _run_cmd(recipe, wd, *extra), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        killed_in = _kill_while_saving(proc, wd)
        if killed_in:
            break
    assert killed_in, "never caught the trainer mid-save"
    st = status_json(recipe, wd)
    assert st["pretrain"]["status"] == "interrupted" and not _committed(wd, "pretrain")

    rc, out = _run(recipe_cli, recipe, wd)
    assert rc == 0, out
    log = (wd / "tiny-pretrain" / "logs" / "pretrain.log").read_text()
    assert f"{killed_in} is incomplete" in log and "set aside" in log
    st = status_json(recipe, wd)
    assert [st[s]["cached"] for s in DATA_STAGES] == [True] * 4
    metrics = st["pretrain"]["metrics"]
    assert st["pretrain"]["status"] == "done" and metrics["global_step"] == 40
    assert 0 < metrics["resumed_from_step"] < int(killed_in.split("-")[1])

    straight = tmp_path / "straight"
    rc, out = _run(recipe_cli, recipe, straight)
    assert rc == 0, out
    assert _weights(status_json(recipe, straight)) == _weights(st)
