"""GPU proof: run the recipes under recipes/gpu/ with `recipe run`, as users run them, and print one
summary line per recipe (plus JSON lines for machines).  Started by bench/gpu_check.sh, which first
installs what is missing; run it directly where the project is already installed:

    python bench/gpu_check.py                    # on a GPU: (a), (b), (c), (d) in that order
    python bench/gpu_check.py --only a --set a:vars.batch=48
    python bench/gpu_check.py --smoke            # the same recipes shrunk to CPU size (CI)

Recipes (most valuable first):
  a  recipes/gpu/tinysolar_248m_bf16.yaml  TinySolar-248m bf16 pretraining (tokens/s, TFLOP/s, MFU), up-scaling
  b  recipes/gpu/qlora_sft.yaml            QLoRA (nf4, double quant, bf16 compute) SFT of a ~0.53B Llama, merge, eval
  c  recipes/gpu/quantize_gpu.yaml         bitsandbytes int8 / nf4 and GPTQ 4-bit g128, each reloaded, ppl delta
  d  recipes/gpu/deepspeed_zero2.yaml      DeepSpeed ZeRO-2 and FSDP2 pretraining, launched by `recipe run`

`--smoke` shrinks every recipe with `--set` overrides (tiny models, a few steps) and nothing else: the
recipe files themselves are what gets validated and run.  Where no CUDA device is visible, every stage
that needs one must refuse with its documented message (checked at `recipe validate` time with
`device: cpu` where the stage has that check, and at run time); the recipe then runs again with those
stages swapped for their CPU counterparts (lora for qlora, int8 / gguf for bnb / gptq, DDP for DeepSpeed),
so the rest of it is exercised too.  That is the same code path as on a GPU, minus the swap.  Every recipe
is one `recipe run`: distributed stages (d) are launched by the runner from their `launch:` blocks, in 2
processes where no CUDA device is visible (`cpu_set`: FSDP on CPU needs 2).

The pretrain stages' summaries carry tokens/s (the stage's own figure over the whole training loop, and
a steady-state figure timed from the stage log's step lines, which leaves out start-up and the final
checkpoint), achieved TFLOP/s (bench/gpu_flops.py: 6N + 12 L H Q T per token) and MFU against the
device's dense bf16 peak (looked up by device name; --peak-tflops overrides).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from gpu_flops import model_flops_per_token, peak_bf16_flops

ROOT = Path(__file__).resolve().parents[1]
GPU_REFUSAL = r"needs a CUDA GPU"


@dataclass
class GpuStage:
    """A stage that needs a CUDA device (and a GPU-only library)."""

    name: str
    refusal: str  # regular expression its error matches where no CUDA device is visible
    swap: list[str]  # --set overrides that turn it into its CPU counterpart
    validate_refusal: bool = True  # `recipe validate` with device: cpu already reports it


@dataclass
class Spec:
    key: str
    file: str
    title: str
    budget_s: int  # on a GPU
    smoke_set: list[str]
    gpu_stages: list[GpuStage] = field(default_factory=list)
    cpu_set: list[str] = field(default_factory=list)  # --set overrides where no CUDA device is visible
    independent: list[str] = field(default_factory=list)  # still worth running after one of them failed

    @property
    def path(self) -> Path:
        return ROOT / self.file


# small inputs for --smoke: 600 Shakespeare paragraphs and the json package's sources
SMOKE_CORPUS = (
    'stages.corpus.params.sources=[{name: shakespeare, path: "${paths.data}/tinyshakespeare.txt", '
    'split_by: blank_lines, count: 600}, {name: python, path: "${paths.stdlib}/json", glob: "*.py"}]'
)
SMOKE_COMMON = [SMOKE_CORPUS, "stages.corpus.params.validation=0.1", "defaults.cpu_threads=1"]
SMOKE_MODEL = ["vars.tokenizer_vocab=512", "vars.heads=4"]

SPECS: dict[str, Spec] = {
    s.key: s
    for s in (
        Spec(
            "a",
            "recipes/gpu/tinysolar_248m_bf16.yaml",
            "TinySolar-248m bf16 pretraining + 12->16 up-scaling",
            budget_s=270,
            smoke_set=[
                *SMOKE_COMMON,
                *SMOKE_MODEL,
                "vars.hidden=64",
                "vars.vocab=512",
                "vars.mlp=256",
                "vars.kv_heads=2",
                "vars.max_positions=128",
                "vars.seq_len=64",
                "vars.batch=4",
                "vars.steps=20",
                "vars.upscaled_steps=5",
                "stages.eval.params.generation.max_new_tokens=8",
            ],
        ),
        Spec(
            "b",
            "recipes/gpu/qlora_sft.yaml",
            "QLoRA SFT (nf4, double quant, bf16 compute) of a ~0.53B Llama, merge, eval",
            budget_s=180,
            smoke_set=[
                "stages.corpus.params.sources=[{name: responses, path: "
                '"${paths.data}/instruction-data.json", text_column: output}, {name: shakespeare, '
                'path: "${paths.data}/tinyshakespeare.txt", split_by: blank_lines, count: 300}]',
                "defaults.cpu_threads=1",
                *SMOKE_MODEL,
                "vars.hidden=64",
                "vars.layers=2",
                "vars.mlp=128",
                "vars.kv_heads=2",
                "vars.max_length=128",
                "vars.steps=3",
                "vars.batch=2",
                "stages.sft.params.max_eval_samples=4",
                "stages.sft.params.num_samples=1",
                "stages.sft.params.sample_max_new_tokens=8",
                "stages.eval.params.max_eval_samples=4",
                "stages.eval.params.generation.max_new_tokens=8",
            ],
            gpu_stages=[
                GpuStage("sft", GPU_REFUSAL, ["stages.sft.params.method=lora", "stages.sft.params.optim=adamw_torch"])
            ],
        ),
        Spec(
            "c",
            "recipes/gpu/quantize_gpu.yaml",
            "bitsandbytes int8 / nf4 and GPTQ 4-bit g128, reloaded, perplexity delta",
            budget_s=180,
            smoke_set=[
                *SMOKE_COMMON,
                *SMOKE_MODEL,
                "vars.layers=2",
                "vars.hidden=128",  # rows of 128 and 256 inputs: GPTQ's groups of 128 fit (on a GPU)
                "vars.mlp=256",
                "vars.seq_len=64",
                "vars.steps=10",
                "vars.batch=4",
                "vars.eval_tokens=1024",
                "vars.calibration_samples=8",
            ],
            gpu_stages=[
                GpuStage("quant_bnb8", GPU_REFUSAL, ["stages.quant_bnb8.params.method=int8"]),
                GpuStage(
                    "quant_nf4",
                    GPU_REFUSAL,
                    ["stages.quant_nf4.params.method=gguf", "stages.quant_nf4.params.gguf_type=q4_0"],
                ),
                GpuStage(
                    "quant_gptq",
                    GPU_REFUSAL,
                    ["stages.quant_gptq.params.method=int8", "stages.quant_gptq.params.int8_scheme=dynamic_activation"],
                ),
            ],
            independent=["quant_bnb8", "quant_nf4", "quant_gptq"],
        ),
        Spec(
            "d",
            "recipes/gpu/deepspeed_zero2.yaml",
            "DeepSpeed ZeRO-2 and FSDP2 pretraining, launched by `recipe run` from the stages' launch: blocks",
            budget_s=180,
            smoke_set=[
                *SMOKE_COMMON,
                *SMOKE_MODEL,
                "vars.hidden=64",
                "vars.layers=2",
                "vars.mlp=128",
                "vars.seq_len=64",
                "vars.steps=10",
                "vars.batch=4",
            ],
            # FSDP on CPU (gloo) needs 2 processes (1 is refused: nothing to shard); on a GPU vars.processes
            # stays the recipe's 1 (one process per GPU), unless --set d:vars.processes=N
            cpu_set=["vars.processes=2"],
            # no validate-time check for DeepSpeed: the stage refuses it when it builds its TrainingArguments
            gpu_stages=[
                GpuStage(
                    "pretrain_zero2",
                    r"strategy deepspeed needs GPUs",
                    ["stages.pretrain_zero2.launch.strategy=ddp", "stages.pretrain_zero2.launch.config=null"],
                    validate_refusal=False,
                )
            ],
            independent=["pretrain_zero2", "pretrain_fsdp", "eval_zero2", "eval_fsdp"],
        ),
    )
}


# ---------------------------------------------------------------- environment


def environment(peak_tflops: float | None) -> dict[str, Any]:
    """Device, versions and the bf16 peak used for MFU.  Probed in a child process (bench/gpu_env.py
    report), so this process never holds a CUDA context while the recipes run."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("gpu_env.py")), "report"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        info = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"python": sys.version.split()[0], "cuda": False, "device": "?", "error": proc.stderr[-1500:]}
    env: dict[str, Any] = {"python": info["python"], "cuda": bool(info.get("cuda_available")), "device": "cpu"}
    if info.get("torch") is None or "torch_import_error" in info:
        env["error"] = f"torch is not importable: {info.get('torch_import_error', 'not installed')}"
        return env
    env["torch"] = info["torch"]
    if env["cuda"]:
        env["device"] = info["device"]
        env["cuda_version"] = info.get("torch_cuda")
        for key in ("capability", "memory_gib", "bf16", "device_count"):
            env[key] = info.get(key)
    for dist in ("transformers", "accelerate", "peft", "trl", "datasets", "bitsandbytes", "gptqmodel", "deepspeed"):
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            env[dist] = None
    if peak_tflops:
        env["peak_bf16_tflops"], env["peak_source"] = peak_tflops, "--peak-tflops"
    else:
        peak = peak_bf16_flops(env["device"]) if env["cuda"] else None
        env["peak_bf16_tflops"] = peak / 1e12 if peak else None
        env["peak_source"] = "device-name table (bench/gpu_flops.py)" if peak else None
    return env


class GpuPoller:
    """nvidia-smi every 2 s while a command runs: peak memory used and mean utilisation."""

    def __init__(self) -> None:
        self.exe = shutil.which("nvidia-smi")
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuPoller:
        if self.exe:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        query = [self.exe or "nvidia-smi", "--query-gpu=memory.used,utilization.gpu", "--format=csv,noheader,nounits"]
        while not self._stop.wait(2.0):
            try:
                out = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.splitlines()
                mem, util = (float(x) for x in out[0].split(","))
                self.samples.append((mem, util))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=15)

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {}
        return {
            "gpu_memory_used_max_mib": max(m for m, _ in self.samples),
            "gpu_utilization_mean_pct": round(sum(u for _, u in self.samples) / len(self.samples), 1),
        }


# ---------------------------------------------------------------- running recipe commands


@dataclass
class Result:
    rc: int
    seconds: float
    log: Path
    timed_out: bool = False
    gpu: dict[str, float] = field(default_factory=dict)


class Runner:
    """Runs `recipe` commands for one gpu_check invocation: logs, deadlines, process groups."""

    def __init__(self, workdir: Path, out: Path, deadline: float, quiet: bool = False) -> None:
        self.workdir, self.out, self.deadline, self.quiet = workdir, out, deadline, quiet
        self.count = 0
        exe = Path(sys.executable).with_name("recipe")
        self.recipe = [str(exe)] if exe.exists() else [sys.executable, "-m", "recipe_runner.cli"]
        self.env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1", COLUMNS="160")
        self.env.setdefault("TOKENIZERS_PARALLELISM", "false")

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def command(self, sub: str, spec: Spec, sets: list[str], *extra: str) -> list[str]:
        cmd = [*self.recipe, sub, str(spec.path)]
        for s in sets:
            cmd += ["--set", s]
        if sub in ("run", "status", "plan"):
            cmd += ["--workdir", str(self.workdir)]
        return cmd + list(extra)

    def call(self, tag: str, cmd: list[str], timeout: float | None = None) -> Result:
        """Run one command with its output in a log file, killed (its whole process group: SIGINT, so the
        runner records an interrupted stage, then SIGKILL) when it passes ``timeout`` or the deadline."""
        self.count += 1
        log = self.out / "logs" / f"{self.count:02d}-{tag}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        limit = max(1.0, min(timeout if timeout is not None else 1e9, self.remaining()))
        shown = " ".join(("'" + c + "'") if (" " in c or "{" in c) else c for c in cmd)
        if not self.quiet:
            print(f"  $ {shown}", flush=True)
        t0 = time.monotonic()
        timed_out = False
        with log.open("w") as fh, GpuPoller() as poller:
            fh.write(f"$ {shown}\n")
            fh.flush()
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                timed_out = True
                rc = self._stop(proc)
        return Result(rc, time.monotonic() - t0, log, timed_out, poller.summary())

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> int:
        for sig, wait in ((signal.SIGINT, 30), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                return proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        return -9

    def status(self, spec: Spec, sets: list[str]) -> dict[str, Any]:
        """`recipe status --json`; tried twice, then read from the run's manifest (so a status command
        that fails, say while the installed plugins change, does not hide what the run did)."""
        cmd = self.command("status", spec, sets, "--json")
        error = ""
        for attempt in range(2):
            proc = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120)
            if proc.returncode == 0:
                return json.loads(proc.stdout)
            error = (proc.stderr or proc.stdout).strip()[-2000:]
            if attempt == 0:
                time.sleep(3)
        import yaml

        name = yaml.safe_load(spec.path.read_text())["name"]
        manifest = self.workdir / name / "manifest.json"
        stages = json.loads(manifest.read_text()).get("stages", []) if manifest.is_file() else []
        return {"run_dir": str(self.workdir / name), "stages": stages, "error": f"recipe status failed: {error}"}

    def launches(self, spec: Spec, sets: list[str]) -> dict[str, dict[str, Any]]:
        """The launch block of each distributed stage as `recipe plan --json` resolves it with ``sets``
        (strategy, preset, processes, world size): what `recipe run` launched; {} where plan fails."""
        cmd = self.command("plan", spec, sets, "--json")
        proc = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120)
        try:
            plan = json.loads(proc.stdout)
        except ValueError:
            return {}
        keep = ("strategy", "preset", "processes", "nodes", "world_size")
        return {s["name"]: {k: s["launch"].get(k) for k in keep} for s in plan if isinstance(s.get("launch"), dict)}


def tail(path: Path, n: int = 6) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return "\n".join("      " + ln[:300] for ln in lines[-n:])


# ---------------------------------------------------------------- summaries


STEP_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?:\S+ )+?step (\d+): loss=")  # logger, level


def steady_tokens_per_second(log_text: str, tokens_per_step: float) -> dict[str, float] | None:
    """Tokens/s between the first and the last training-loss line of the stage log's last training run:
    leaves out model loading, the first logging interval (CUDA/cuBLAS start-up, allocator warm-up) and
    the final checkpoint, all of which the stage's own tokens_per_second includes."""
    points: list[tuple[float, int]] = []
    for line in log_text.splitlines():
        m = STEP_LINE.match(line)
        if not m:
            continue
        t = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        step = int(m.group(2))
        if points and step <= points[-1][1]:  # a new attempt (resume or re-run) starts a new series
            points = []
        points.append((t, step))
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return None
    (t0, s0), (t1, s1) = points[0], points[-1]
    return {
        "tokens_per_second_steady": (s1 - s0) * tokens_per_step / (t1 - t0),
        "steady_from_step": s0,
        "steady_to_step": s1,
        "steady_seconds": round(t1 - t0, 3),
    }


def attention_implementation(model_dir: Path) -> str | None:
    """The attention implementation transformers picks for this model directory by default, which is
    what the pretrain stage gets (it passes none): built on the meta device, nothing allocated."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(str(model_dir))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return str(model.config._attn_implementation)
    except Exception as e:  # a report detail, never a reason to fail the check
        return f"unknown ({type(e).__name__})"


def pretrain_summary(
    stage: dict[str, Any],
    run_dir: Path,
    peak_tflops: float | None,
    attn: dict[str, str | None],
    launch: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """tokens/s, TFLOP/s and MFU of one finished pretrain stage from its metrics, its output model's
    config.json and its log; with ``launch`` (Runner.launches), how it was launched and what ran."""
    m = stage["metrics"]
    out: dict[str, Any] = {"stage": stage["name"], **launch_facts(m, launch)}
    steps = int(m.get("global_step") or 0)
    if not steps:
        return out
    tokens_per_step = m["tokens_trained"] / steps
    out.update(
        steps=steps,
        seq_len=m.get("seq_len"),
        tokens_per_step=int(tokens_per_step),
        num_parameters=m.get("num_parameters"),
        train_runtime_s=m.get("train_runtime_s"),
        tokens_per_second_stage=m.get("tokens_per_second"),
        final_train_loss=m.get("final_train_loss"),
        eval_loss=m.get("eval_loss"),
        perplexity=m.get("perplexity"),
    )
    log = run_dir / "logs" / f"{stage['name']}.log"
    steady = steady_tokens_per_second(log.read_text(errors="replace"), tokens_per_step) if log.is_file() else None
    if steady:
        out.update(steady)
    artifact = stage.get("artifact")
    if isinstance(artifact, dict):  # a stage with several outputs: the model's
        artifact = artifact.get("model")
    config_path = Path(artifact) / "config.json" if isinstance(artifact, str) else None
    if config_path is None or not config_path.is_file() or not m.get("num_parameters") or not m.get("seq_len"):
        return out
    config = json.loads(config_path.read_text())
    flops = model_flops_per_token(config, int(m["num_parameters"]), int(m["seq_len"]))
    out.update(flops)
    key = str(config_path.parent)
    if key not in attn:
        attn[key] = attention_implementation(config_path.parent)
    out["attn_implementation"] = attn[key]
    tok_s = out.get("tokens_per_second_steady") or out.get("tokens_per_second_stage") or 0.0
    out["tokens_per_second_used"] = "steady" if "tokens_per_second_steady" in out else "stage"
    out["achieved_tflops"] = round(tok_s * flops["flops_per_token"] / 1e12, 3)
    if out.get("tokens_per_second_stage"):
        out["achieved_tflops_stage"] = round(out["tokens_per_second_stage"] * flops["flops_per_token"] / 1e12, 3)
    if peak_tflops:
        out["mfu"] = round(out["achieved_tflops"] / peak_tflops, 4)
        if "achieved_tflops_stage" in out:
            out["mfu_stage"] = round(out["achieved_tflops_stage"] / peak_tflops, 4)
    return out


def launch_facts(metrics: dict[str, Any], launch: dict[str, Any] | None) -> dict[str, Any]:
    """The launch block a stage ran with and what the run recorded of it: its world size (set by the
    rank worker of a launched stage) and, where the stage records them (FSDP on CPU), the strategy it
    trained with and rank 0's share of the parameters."""
    out: dict[str, Any] = {"launch": launch} if launch else {}
    keep = ("world_size", "strategy", "fsdp_parameters", "fsdp_parameters_this_rank", "fsdp_sharded_tensors")
    out.update({k: metrics[k] for k in keep if k in metrics})
    return out


def fmt_launch(p: dict[str, Any]) -> str:
    """' [fsdp_full_shard x 2 processes, rank 0 holds 26,704 of 53,408 values]', '' without a launch."""
    launch = p.get("launch")
    if not launch:
        return ""
    n = p.get("world_size", launch.get("world_size"))
    text = f"{launch.get('preset') or launch.get('strategy')} x {n} process{'' if n == 1 else 'es'}"
    if "fsdp_parameters_this_rank" in p:
        text += f", rank 0 holds {p['fsdp_parameters_this_rank']:,} of {p['fsdp_parameters']:,} values"
    return f" [{text}]"


def stage_summary(stage: dict[str, Any]) -> dict[str, Any]:
    """The headline metrics of a non-pretrain stage."""
    keep = {
        "sft": (
            "method",
            "train_steps",
            "trainable_parameters",
            "total_parameters",
            "eval_loss_before",
            "eval_loss",
            "train_loss",
        ),
        "quantize": (
            "method",
            "format",
            "library",
            "size_bytes",
            "compression_ratio",
            "perplexity_before",
            "perplexity_after",
            "perplexity_delta",
            "perplexity_delta_pct",
            "eval_tokens",
            "quantize_seconds",
        ),
        "eval": ("perplexity", "eval_loss", "perplexity_tokens"),
        "init": ("num_parameters", "num_layers", "mode"),
        "scale": ("num_parameters", "num_layers", "mode"),
        "tokenize": ("num_tokens", "vocab_size"),
        "pack": ("train_rows", "validation_rows", "max_seq_length"),
    }.get(stage["type"], ())
    return {k: stage["metrics"][k] for k in keep if k in stage["metrics"]}


def fmt_pretrain(p: dict[str, Any]) -> str:
    head = p["stage"] + fmt_launch(p)
    if "tokens_per_second_stage" not in p:
        return f"{head}: no metrics"
    tok = p.get("tokens_per_second_steady")
    parts = [f"{head}: {p['steps']} steps x {p['tokens_per_step']:,} tok"]
    if tok:
        parts.append(f"{tok:,.0f} tok/s steady (stage {p['tokens_per_second_stage']:,.0f})")
    else:
        parts.append(f"{p['tokens_per_second_stage']:,.0f} tok/s (stage)")
    if "achieved_tflops" in p:
        parts.append(f"{p['achieved_tflops']:.3g} TFLOP/s")
        parts.append(f"MFU {p['mfu']:.1%}" if "mfu" in p else "MFU n/a (no peak)")
    if p.get("perplexity") is not None:
        parts.append(f"val ppl {p['perplexity']:.4g}")
    return ", ".join(parts)


def fmt_stage(name: str, s: dict[str, Any]) -> str:
    if "perplexity_delta" in s:
        return (
            f"{name}: {s.get('format', s.get('method'))} x{s.get('compression_ratio')} ppl "
            f"{s['perplexity_before']:.4g} -> {s['perplexity_after']:.4g} ({s['perplexity_delta_pct']:+.2f}%)"
        )
    if "eval_loss_before" in s:
        return (
            f"{name}: {s.get('method')} eval loss {s['eval_loss_before']:.4g} -> {s.get('eval_loss', float('nan')):.4g}"
        )
    if "perplexity" in s:
        return f"{name}: ppl {s['perplexity']:.4g}"
    return ""


# ---------------------------------------------------------------- one recipe


def validate(runner: Runner, spec: Spec, sets: list[str], record: dict[str, Any]) -> bool:
    res = runner.call(f"{spec.key}-validate", runner.command("validate", spec, sets), timeout=120)
    if res.rc != 0:
        record.update(status="failed", error="recipe validate: " + res.log.read_text()[-1500:].strip())
        return False
    return True


def check_validate_refusals(runner: Runner, spec: Spec, sets: list[str], record: dict[str, Any]) -> bool:
    """`recipe validate` with device: cpu on every GPU stage that checks it: exit 2, each one named."""
    stages = [g for g in spec.gpu_stages if g.validate_refusal]
    if not stages:
        return True
    cpu = [f"stages.{g.name}.params.device=cpu" for g in stages]
    res = runner.call(f"{spec.key}-validate-cpu", runner.command("validate", spec, sets + cpu), timeout=120)
    text = res.log.read_text(errors="replace")
    for g in stages:
        line = next((ln for ln in text.splitlines() if f"stage '{g.name}'" in ln and re.search(g.refusal, ln)), None)
        if res.rc != 2 or line is None:
            record.update(
                status="failed",
                error=f"expected `recipe validate` (device cpu) to refuse stage {g.name!r} with exit 2, "
                f"got exit {res.rc}: {text[-800:]}",
            )
            return False
        record["refusals"].append({"stage": g.name, "when": "validate", "message": line.split(": ", 1)[-1].strip()})
    return True


def run_steps(
    runner: Runner, spec: Spec, sets: list[str], record: dict[str, Any], cuda: bool, budget_end: float
) -> tuple[bool, dict[str, Any]]:
    """One `recipe run` of the recipe (distributed stages launched by the runner itself, from their
    `launch:` blocks); returns (it succeeded, `recipe status --json`).  On a CPU a failure ends it (it is
    the refusal under check); on a GPU the still pending `independent` stages are then run one by one
    (`--only`), so one missing library costs one result, not the rest of the recipe."""
    res = runner.call(f"{spec.key}-run", runner.command("run", spec, sets), timeout=budget_end - time.monotonic())
    record["commands"].append(
        {"cmd": "run", "rc": res.rc, "seconds": round(res.seconds, 1), "log": str(res.log), **res.gpu}
    )
    if res.timed_out:
        record.update(status="timeout", error=f"run: stopped after {res.seconds:.0f}s (budget)")
        return False, runner.status(spec, sets)
    if res.rc == 0:
        return True, runner.status(spec, sets)
    record["last_failure"] = f"`run` exit {res.rc}:\n{tail(res.log, 8)}"
    if not runner.quiet:
        print(tail(res.log), flush=True)
    if cuda:
        for s in runner.status(spec, sets).get("stages", []):
            if s["name"] not in spec.independent or s["status"] != "pending" or time.monotonic() > budget_end:
                continue
            only = "--only", s["name"]
            r = runner.call(
                f"{spec.key}-{s['name']}",
                runner.command("run", spec, sets, *only),
                timeout=budget_end - time.monotonic(),
            )
            record["commands"].append({"cmd": " ".join(only), "rc": r.rc, "seconds": round(r.seconds, 1), **r.gpu})
    return False, runner.status(spec, sets)


def failed_stage(status: dict[str, Any]) -> tuple[str | None, str]:
    for s in status.get("stages", []):
        if s["status"] in ("failed", "interrupted"):
            return s["name"], str(s.get("error") or "")
    return None, ""


def check_run_refusal(spec: Spec, ok: bool, status: dict[str, Any], record: dict[str, Any]) -> bool:
    """Without CUDA the as-written recipe must stop at a GPU stage with that stage's refusal: recorded
    (True), or the record marked failed with what happened instead (False)."""
    name, error = failed_stage(status)
    gpu = {g.name: g for g in spec.gpu_stages}
    if not ok and name in gpu and re.search(gpu[name].refusal, error):
        record["refusals"].append({"stage": name, "when": "run", "message": error[:400]})
        return True
    if ok:
        why = "every stage ran"
    elif name:
        why = f"stage {name!r} failed with: {error[:600]}"
    else:
        why = f"no stage failed; {status.get('error', '')} {record.get('last_failure', '')}"[-1000:]
    record.update(status="failed", error="expected a GPU-only stage to refuse on this machine without CUDA; " + why)
    return False


def check_recipe(spec: Spec, args: argparse.Namespace, runner: Runner, env: dict[str, Any]) -> dict[str, Any]:
    t0 = time.monotonic()
    budget = args.smoke_budget_s if args.smoke else spec.budget_s
    budget_end = min(t0 + budget, runner.deadline)
    cuda = bool(env["cuda"])
    sets = (
        (spec.smoke_set if args.smoke else [])
        + ([] if cuda else spec.cpu_set)
        + [s.split(":", 1)[1] for s in args.set if s.startswith(spec.key + ":")]
    )
    record: dict[str, Any] = {
        "recipe": spec.key,
        "file": spec.file,
        "title": spec.title,
        "mode": "smoke" if args.smoke else "full",
        "status": "ok",
        "device": env["device"],
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "sets": sets,
        "refusals": [],
        "swapped": [],
        "commands": [],
    }
    print(f"[{spec.key}] {spec.file}: {spec.title} (budget {budget_end - t0:.0f}s)", flush=True)
    if validate(runner, spec, sets, record) and (cuda or check_validate_refusals(runner, spec, sets, record)):
        ok, status = run_steps(runner, spec, sets, record, cuda, budget_end)
        if not cuda and spec.gpu_stages and record["status"] == "ok" and check_run_refusal(spec, ok, status, record):
            # refused as expected: the rest of the recipe with the GPU stages swapped for CPU ones
            record["swapped"] = [s for g in spec.gpu_stages for s in g.swap]
            sets = sets + record["swapped"]
            ok, status = run_steps(runner, spec, sets, record, cuda, budget_end)
        not_done = [st["name"] for st in status.get("stages", []) if st["status"] != "done"]
        if record["status"] == "ok" and ok and not_done:
            # every command succeeded but `recipe status` does not see the results: the stages' fingerprints
            # changed under the run (the installed plugins changed), or the status could not be read
            record.update(
                status="failed",
                error=f"the run succeeded but these stages are not done: {', '.join(not_done)} "
                f"{status.get('error', '')}".strip(),
            )
        if record["status"] == "ok" and not ok:
            name, error = failed_stage(status)
            error = f"stage {name!r}: {error[:1500]}" if name else record.get("last_failure", "recipe run failed")
            record.update(status="failed", error=error)
        summarise(record, status, env, runner.launches(spec, sets))
    record["seconds"] = round(time.monotonic() - t0, 1)
    return record


def summarise(
    record: dict[str, Any], status: dict[str, Any], env: dict[str, Any], launches: dict[str, dict[str, Any]]
) -> None:
    run_dir = Path(status.get("run_dir", "."))
    record["run_dir"] = str(run_dir)
    attn: dict[str, str | None] = {}
    record["stages"] = {
        s["name"]: {"type": s["type"], "status": s["status"], "seconds": s.get("seconds"), **stage_summary(s)}
        for s in status.get("stages", [])
    }
    record["pretrain"] = [
        pretrain_summary(s, run_dir, env.get("peak_bf16_tflops"), attn, launches.get(s["name"]))
        for s in status.get("stages", [])
        if s["type"] == "pretrain" and s["status"] == "done"
    ]


def summary_line(r: dict[str, Any], env: dict[str, Any]) -> str:
    head = f"gpu_check [{r['recipe']}] {Path(r['file']).stem}: "
    if r["status"] == "skipped":
        return head + f"SKIPPED ({r.get('error')})"
    parts = [("ok" if r["status"] == "ok" else r["status"].upper()) + f" in {r.get('seconds', 0):.0f}s"]
    if r["refusals"]:
        said = "; ".join(f"{x['stage']} at {x['when']}" for x in r["refusals"])
        parts.append(f"refused as expected without CUDA ({said}); rest run with " + ", ".join(r["swapped"] or ["-"]))
    for p in r.get("pretrain", []):
        parts.append(fmt_pretrain(p))
    for name, s in r.get("stages", {}).items():
        if s["type"] != "pretrain" and (text := fmt_stage(name, s)):
            parts.append(text)
    if r["status"] != "ok" and r.get("error"):
        parts.append("error: " + " ".join(r["error"].split())[:400])
    line = head + " | ".join(parts)
    if env.get("peak_bf16_tflops") and r.get("pretrain"):
        line += f" | peak {env['peak_bf16_tflops']:g} TFLOP/s ({env['device']})"
    return line


def copy_small_files(record: dict[str, Any], spec: Spec, out: Path) -> None:
    """status.json and the stage logs next to the summary (not the models: $OUT travels back)."""
    dest = out / spec.key
    dest.mkdir(parents=True, exist_ok=True)
    run_dir = Path(record.get("run_dir", ""))
    if (run_dir / "logs").is_dir():
        shutil.copytree(run_dir / "logs", dest / "stage_logs", dirs_exist_ok=True)
    (dest / "record.json").write_text(json.dumps(record, indent=1, default=str))


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="the same recipes shrunk to CPU size (CI)")
    ap.add_argument("--only", default="a,b,c,d", help="recipes to run, in this order (default a,b,c,d)")
    ap.add_argument("--budget-s", type=float, default=None, help="time for the whole check (default 540; smoke 600)")
    ap.add_argument("--smoke-budget-s", type=float, default=240, help="per recipe in --smoke (default 240)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default: by device name)")
    ap.add_argument("--out", type=Path, default=None, help="summary and logs (default $OUT, else runs/gpu_check)")
    ap.add_argument("--workdir", type=Path, default=None, help="recipe run directories (default runs/gpu_check/work)")
    ap.add_argument("--fresh", action="store_true", help="empty the workdir first (no cached stages)")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY:PATH=VALUE", help="extra override, e.g. a:vars.batch=48"
    )
    ap.add_argument("--quiet", action="store_true", help="print only the summary lines")
    a = ap.parse_args(argv)
    keys = [k.strip() for k in a.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SPECS]
    if unknown:
        ap.error(f"--only: unknown recipe(s) {unknown}; choose from {', '.join(SPECS)}")
    a.keys = keys
    for s in a.set:
        if s.split(":", 1)[0] not in SPECS or "=" not in s:
            ap.error(f"--set {s!r}: expected KEY:PATH=VALUE with KEY one of {', '.join(SPECS)}")
    if a.budget_s is None:
        a.budget_s = 600.0 if a.smoke else 540.0
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "runs" / "gpu_check")
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    workdir = (args.workdir or ROOT / "runs" / "gpu_check" / "work").resolve()
    if args.fresh and workdir.exists():
        shutil.rmtree(workdir)
    env = environment(args.peak_tflops)
    env_line = ", ".join(f"{k}={v}" for k, v in env.items() if v is not None)
    print(f"gpu_check: {'smoke' if args.smoke else 'full'} mode; {env_line}", flush=True)
    summary_path = out / "gpu_check.jsonl"
    runner = Runner(workdir, out, start + args.budget_s, quiet=args.quiet)
    records: list[dict[str, Any]] = []
    for key in args.keys:
        spec = SPECS[key]
        if "error" in env:
            rec = {"recipe": key, "file": spec.file, "status": "failed", "error": env["error"], "refusals": []}
        elif runner.remaining() < 30:
            rec = {"recipe": key, "file": spec.file, "status": "skipped", "error": "no time left in --budget-s"}
        else:
            rec = check_recipe(spec, args, runner, env)
            copy_small_files(rec, spec, out)
        rec["line"] = summary_line(rec, env)
        records.append(rec)
        print(rec["line"], flush=True)
        with summary_path.open("a") as f:  # one JSON line per recipe, written as soon as it is known
            f.write(json.dumps({**rec, "env": env}, default=str) + "\n")
    print(f"gpu_check: {len(records)} recipe(s) in {time.monotonic() - start:.0f}s; summary: {summary_path}")
    for rec in records:
        print(rec["line"])
    return 0 if records and all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
