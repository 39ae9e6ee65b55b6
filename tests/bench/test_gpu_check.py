"""The GPU proof (bench/gpu_check.sh, recipes/gpu/): the recipes validate offline, the FLOP accounting
and the summary arithmetic are right, and `bench/gpu_check.sh --smoke` runs every recipe on this
machine, checking that the GPU-only stages refuse with their messages where there is no CUDA."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
GPU_RECIPES = sorted((ROOT / "recipes" / "gpu").glob("*.yaml"))
OFFLINE = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def bench_module(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def recipe_cli(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("recipe")  # the console script, as users run it
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "recipe_runner.cli"]
    return subprocess.run(cmd + list(args), cwd=ROOT, env=OFFLINE, capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------- the recipes


def test_the_four_gpu_recipes_exist_and_the_check_knows_each():
    names = [p.name for p in GPU_RECIPES]
    assert names == ["deepspeed_zero2.yaml", "qlora_sft.yaml", "quantize_gpu.yaml", "tinysolar_248m_bf16.yaml"]
    specs = bench_module("gpu_check").SPECS
    assert list(specs) == ["a", "b", "c", "d"]  # the order of value: (a) first
    assert sorted(Path(s.file).name for s in specs.values()) == names


@pytest.mark.parametrize("recipe", GPU_RECIPES, ids=lambda p: p.stem)
def test_gpu_recipe_validates_offline_without_heavy_imports(recipe):
    """`recipe validate` passes offline and, as for every bundled recipe, imports no torch & co."""
    code = (
        "import sys; from recipe_runner.cli import app\n"
        f"try:\n    app(['validate', {str(recipe)!r}])\nexcept SystemExit as e:\n    print('exit', e.code)\n"
        "print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=OFFLINE, capture_output=True, text=True)
    *head, modules = proc.stdout.strip().splitlines()
    assert f"{recipe}: ok (" in "\n".join(head), proc.stdout + proc.stderr
    assert "exit" not in "\n".join(head) or "exit 0" in head
    heavy = {"torch", "transformers", "datasets", "trl", "peft", "accelerate", "bitsandbytes", "deepspeed"}
    assert not heavy & set(modules.split())


def test_gpu_recipes_are_valid_under_the_committed_schema():
    import jsonschema

    schema = json.loads((ROOT / "schemas" / "recipe.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for recipe in GPU_RECIPES:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(recipe.read_text()))]
        assert not errors, f"{recipe.name}: {errors[:3]}"


@pytest.mark.parametrize("key", ["a", "b", "c", "d"])
def test_smoke_overrides_validate(key):
    """What --smoke runs is the recipe file plus --set overrides (those for a machine without CUDA, and
    the CPU swap of its GPU stages), and each combination is valid too."""
    spec = bench_module("gpu_check").SPECS[key]
    swap = [s for g in spec.gpu_stages for s in g.swap]
    for sets in (spec.smoke_set, spec.smoke_set + spec.cpu_set, spec.smoke_set + spec.cpu_set + swap):
        proc = recipe_cli("validate", str(spec.path), *[a for s in sets for a in ("--set", s)])
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_deepspeed_recipe_launches_its_stages_through_launch_blocks(tmp_path):
    """Recipe (d) is one plain `recipe run`: its pretrain stages carry launch: blocks (ZeRO-2 with the
    proof's own config, FSDP2 with the fsdp_full_shard preset) in vars.processes ranks, 1 by default,
    and no raw deepspeed / fsdp stage parameters; gpu_check wraps nothing in torch.distributed.run."""
    recipe = yaml.safe_load((ROOT / "recipes/gpu/deepspeed_zero2.yaml").read_text())
    assert recipe["vars"]["processes"] == 1
    stages = {s.get("name", s["type"]): s for s in recipe["stages"]}
    for name in ("pretrain_zero2", "pretrain_fsdp"):
        assert stages[name]["launch"]["processes"] == "${vars.processes}"
        assert not {"deepspeed", "fsdp", "fsdp_config"} & set(stages[name]["params"])
    zero2 = stages["pretrain_zero2"]["launch"]
    assert zero2["strategy"] == "deepspeed" and "preset" not in zero2
    assert zero2["config"]["zero_optimization"] == {
        "stage": 2,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": 5.0e7,
        "allgather_bucket_size": 5.0e7,
    }
    assert "optimizer" not in zero2["config"]  # the Trainer's AdamW: no DeepSpeed op to compile
    assert stages["pretrain_fsdp"]["launch"] == {
        "processes": "${vars.processes}",
        "strategy": "fsdp",
        "preset": "fsdp_full_shard",
    }
    assert "torch.distributed.run" not in (BENCH / "gpu_check.py").read_text()

    spec = bench_module("gpu_check").SPECS["d"]
    assert spec.cpu_set == ["vars.processes=2"]
    runner = bench_module("gpu_check").Runner(tmp_path, tmp_path, deadline=0.0, quiet=True)
    assert runner.launches(spec, []) == {
        "pretrain_zero2": {"strategy": "deepspeed", "preset": None, "processes": 1, "nodes": 1, "world_size": 1},
        "pretrain_fsdp": {"strategy": "fsdp", "preset": "fsdp_full_shard", "processes": 1, "nodes": 1, "world_size": 1},
    }
    swapped = runner.launches(spec, spec.cpu_set + spec.gpu_stages[0].swap)
    assert {n: (s["strategy"], s["world_size"]) for n, s in swapped.items()} == {
        "pretrain_zero2": ("ddp", 2),
        "pretrain_fsdp": ("fsdp", 2),
    }


@pytest.mark.parametrize(
    ("key", "stages"), [("b", ["sft"]), ("c", ["quant_bnb8", "quant_nf4", "quant_gptq"])], ids=["qlora", "quantize"]
)
def test_gpu_only_stages_are_refused_at_validate_time_on_device_cpu(key, stages):
    spec = bench_module("gpu_check").SPECS[key]
    args = [a for name in stages for a in ("--set", f"stages.{name}.params.device=cpu")]
    proc = recipe_cli("validate", str(spec.path), *args)
    assert proc.returncode == 2
    for name in stages:
        assert any(f"stage '{name}'" in line and "needs a CUDA GPU" in line for line in proc.stderr.splitlines()), (
            proc.stderr
        )


def test_tinysolar_recipe_has_the_course_shape_and_parameter_count():
    """vars of recipe (a) build the course's TinySolar-248m-4k: 248,013,824 parameters with the SOLAR
    vocabulary; up-scaled [0,8)+[4,12) it has the course's 308,839,424."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    recipe = yaml.safe_load((ROOT / "recipes/gpu/tinysolar_248m_bf16.yaml").read_text())
    v = recipe["vars"]
    assert v["seq_len"] >= 1024 and v["steps"] >= 100
    upscale = next(s for s in recipe["stages"] if s.get("name") == "upscale")
    assert upscale["params"]["layer_slices"] == [[0, 8], [4, 12]]
    counts = []
    for layers in (v["layers"], 16):
        cfg = LlamaConfig(
            vocab_size=v["vocab"],
            hidden_size=v["hidden"],
            intermediate_size=v["mlp"],
            num_hidden_layers=layers,
            num_attention_heads=v["heads"],
            num_key_value_heads=v["kv_heads"],
            max_position_embeddings=v["max_positions"],
        )
        with torch.device("meta"):
            counts.append(sum(p.numel() for p in LlamaForCausalLM(cfg).parameters()))
    assert counts == [248_013_824, 308_839_424]


# ---------------------------------------------------------------- FLOP accounting


def test_flops_per_token_of_tinysolar_248m():
    flops = bench_module("gpu_flops")
    config = {
        "hidden_size": 1024,
        "num_attention_heads": 32,
        "num_hidden_layers": 12,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
    }
    got = flops.model_flops_per_token(config, 248_013_824, 1024)
    # N leaves out only the 32,000 x 1,024 input-embedding lookup; the LM head is a matmul and stays
    assert got["n_matmul"] == 248_013_824 - 32_000 * 1024 == 215_245_824
    assert got["dense_flops_per_token"] == 6 * 215_245_824
    assert got["attention_flops_per_token"] == 12 * 12 * 32 * 32 * 1024
    assert got["flops_per_token"] == 1_442_469_888
    # tied embeddings: the shared matrix is the head's, all parameters count
    tied = flops.model_flops_per_token({**config, "tie_word_embeddings": True}, 1000, 8)
    assert tied["n_matmul"] == 1000
    # an explicit head_dim (e.g. Qwen3, Gemma) is what the attention term uses
    assert (
        flops.model_flops_per_token({**config, "head_dim": 64}, 248_013_824, 1024)["attention_flops_per_token"]
        == 12 * 12 * 32 * 64 * 1024
    )


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989),
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H100 NVL", 835),
        ("NVIDIA H200", 989),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA A10G", 70),
        ("NVIDIA A10", 125),
        ("NVIDIA L4", 121),
        ("NVIDIA L40S", 362),
        ("cpu", None),
    ],
)
def test_peak_by_device_name(name, tflops):
    peak = bench_module("gpu_flops").peak_bf16_flops(name)
    assert (peak / 1e12 if peak else None) == tflops


def test_train_throughput_uses_the_shared_accounting():
    text = (BENCH / "train_throughput.py").read_text()
    assert "from gpu_flops import" in text
    assert "PEAK_BF16 =" not in text and "def mfu(" not in text


# ---------------------------------------------------------------- summary arithmetic


LOG = """\
2026-11-26 10:00:00,000 INFO step 10: loss=9.1, grad_norm=1.0, learning_rate=0.0006, epoch=0.1
2026-11-26 10:00:01,000 INFO step 20: loss=8.0, grad_norm=1.0, learning_rate=0.0006, epoch=0.2
2026-11-26 10:00:30,000 ERROR stage failed: CUDA out of memory
2026-11-26 10:01:00,000 INFO step 10: loss=9.1, grad_norm=1.0, learning_rate=0.0006, epoch=0.1
2026-11-26 10:01:02,500 INFO step 20: loss=8.0, grad_norm=1.0, learning_rate=0.0006, epoch=0.2
2026-11-26 10:01:05,000 INFO step 30: loss=7.5, grad_norm=1.0, learning_rate=0.0006, epoch=0.3
2026-11-26 10:01:05,100 INFO step 30: train_runtime=9.0, train_loss=8.1
"""


def test_steady_tokens_per_second_times_the_last_series_of_step_lines():
    steady = bench_module("gpu_check").steady_tokens_per_second(LOG, tokens_per_step=1000)
    # the second attempt: steps 10 -> 30 in 5.0 s; the first attempt and the train_runtime line are ignored
    assert steady == {
        "tokens_per_second_steady": 4000.0,
        "steady_from_step": 10,
        "steady_to_step": 30,
        "steady_seconds": 5.0,
    }
    assert bench_module("gpu_check").steady_tokens_per_second(LOG.splitlines()[0], 1000) is None


def test_pretrain_summary_computes_tflops_and_mfu(tmp_path):
    gpu_check = bench_module("gpu_check")
    model = tmp_path / "model"
    model.mkdir()
    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": 512,
        "tie_word_embeddings": False,
    }
    (model / "config.json").write_text(json.dumps(config))
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "pretrain.log").write_text(LOG)
    stage = {
        "name": "pretrain",
        "type": "pretrain",
        "status": "done",
        "artifact": str(model),
        "metrics": {
            "global_step": 30,
            "tokens_trained": 30_000,
            "seq_len": 100,
            "num_parameters": 200_000,
            "tokens_per_second": 3000.0,
            "train_runtime_s": 10.0,
        },
    }
    out = gpu_check.pretrain_summary(stage, tmp_path, peak_tflops=2.0, attn={})
    per_token = 6 * (200_000 - 512 * 64) + 12 * 2 * 64 * 100
    assert out["flops_per_token"] == per_token
    assert out["tokens_per_second_steady"] == 4000.0 and out["tokens_per_second_used"] == "steady"
    assert out["achieved_tflops"] == round(4000 * per_token / 1e12, 3)
    assert out["mfu"] == round(out["achieved_tflops"] / 2.0, 4)
    assert out["mfu_stage"] == round(round(3000 * per_token / 1e12, 3) / 2.0, 4)
    assert out["attn_implementation"] == "sdpa"  # transformers' default for Llama: what the stage trains with


def test_summary_line_says_how_each_pretrain_stage_was_launched():
    gpu_check = bench_module("gpu_check")
    metrics = {"world_size": 2, "strategy": "fsdp", "fsdp_parameters": 100, "fsdp_parameters_this_rank": 50}
    launch = {"strategy": "fsdp", "preset": "fsdp_full_shard", "processes": 2, "nodes": 1, "world_size": 2}
    p = {"stage": "pretrain_fsdp", **gpu_check.launch_facts(metrics, launch)}
    assert p["launch"] == launch and p["strategy"] == "fsdp" and p["world_size"] == 2
    assert (
        gpu_check.fmt_pretrain(p)
        == "pretrain_fsdp [fsdp_full_shard x 2 processes, rank 0 holds 50 of 100 values]: no metrics"
    )
    one = {"strategy": "deepspeed", "preset": None, "processes": 1, "nodes": 1, "world_size": 1}
    p = {"stage": "pretrain_zero2", **gpu_check.launch_facts({"world_size": 1}, one)}
    assert gpu_check.fmt_pretrain(p) == "pretrain_zero2 [deepspeed x 1 process]: no metrics"
    assert gpu_check.fmt_pretrain({"stage": "pretrain", **gpu_check.launch_facts({}, None)}) == "pretrain: no metrics"


def test_gpu_env_requirements_sets():
    gpu_env = bench_module("gpu_env")

    def names(reqs: list[str]) -> set[str]:
        return {gpu_env.canonical(re.split(r"[<>=!~ ;\[]", r)[0]) for r in reqs}

    full_a = names(gpu_env.project_requirements(["a"], "full"))
    runtime_c = names(gpu_env.project_requirements(["c"], "runtime"))
    assert {"torch", "transformers", "lm-eval"} <= full_a and "bitsandbytes" not in full_a
    assert {"torch", "transformers", "bitsandbytes", "gptqmodel"} <= runtime_c and "lm-eval" not in runtime_c
    assert "deepspeed" in names(gpu_env.project_requirements(["d"], "runtime"))
    missing = dict(gpu_env.unsatisfied(["no-such-distribution-xyz>=1", "pytest>=1", "pytest<1"]))
    assert missing == {"no-such-distribution-xyz>=1": "not installed", "pytest<1": f"installed {pytest.__version__}"}


def test_gpu_check_rejects_unknown_recipes():
    gpu_check = bench_module("gpu_check")
    with pytest.raises(SystemExit) as e:
        gpu_check.parse_args(["--only", "a,x"])
    assert e.value.code == 2
    assert gpu_check.parse_args(["--only", "c,a"]).keys == ["c", "a"]


# ---------------------------------------------------------------- the smoke run


@pytest.mark.slow
def test_gpu_check_smoke(tmp_path):
    """`bench/gpu_check.sh --smoke` as CI runs it (plus --peak-tflops, so the MFU path runs here too)."""
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run(
        [str(BENCH / "gpu_check.sh"), "--python", sys.executable, "--smoke", "--quiet", "--peak-tflops", "1"]
        + ["--out", str(out), "--workdir", str(work)],
        cwd=ROOT,
        env=OFFLINE,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    records = {r["recipe"]: r for r in map(json.loads, (out / "gpu_check.jsonl").read_text().splitlines())}
    assert list(records) == ["a", "b", "c", "d"]
    cuda = records["a"]["env"]["cuda"]
    lines = {k: next(ln for ln in proc.stdout.splitlines() if ln.startswith(f"gpu_check [{k}]")) for k in records}
    for key, rec in records.items():
        assert rec["status"] == "ok" and rec["mode"] == "smoke", rec
        assert lines[key].startswith(f"gpu_check [{key}] {Path(rec['file']).stem}: ok in ")
        assert all(s["status"] == "done" for s in rec["stages"].values()), rec["stages"]

    # (a): the pretrain stages' throughput, FLOPs and MFU (against the 1 TFLOP/s given)
    base = next(p for p in records["a"]["pretrain"] if p["stage"] == "pretrain_base")
    assert base["steps"] == 20 and base["tokens_per_step"] == 4 * 64
    assert base["tokens_per_second_steady"] > 0 and base["steady_from_step"] == 10
    assert base["flops_per_token"] == 6 * base["n_matmul"] + 12 * 12 * 64 * 64
    assert base["mfu"] == pytest.approx(base["achieved_tflops"] / 1.0, abs=1e-4)
    assert "MFU " in lines["a"] and "tok/s steady" in lines["a"]
    assert records["a"]["stages"]["upscale"]["num_layers"] == 16

    # (b), (c), (d): without CUDA the GPU-only stages refuse, then the rest runs with the CPU swap
    expected = {"b": {"sft"}, "c": {"quant_bnb8", "quant_nf4", "quant_gptq"}, "d": {"pretrain_zero2"}}
    for key, stages in expected.items():
        refused = {(r["stage"], r["when"]) for r in records[key]["refusals"]}
        if cuda:
            assert not refused
            continue
        assert "refused as expected without CUDA" in lines[key]
        assert {s for s, _ in refused} == stages
        run_time = [s for s, when in refused if when == "run"]
        assert len(run_time) == 1 and run_time[0] in stages
    if not cuda:
        assert ("sft", "validate") in {(r["stage"], r["when"]) for r in records["b"]["refusals"]}
        assert records["b"]["stages"]["sft"]["method"] == "lora"
        for name in expected["c"]:
            q = records["c"]["stages"][name]
            assert q["method"] in ("int8", "gguf") and "perplexity_delta" in q
        assert "strategy deepspeed needs GPUs" in records["d"]["refusals"][0]["message"]

    # (d): one `recipe run` that launched both pretrain stages itself; without CUDA in 2 gloo processes,
    # the ZeRO-2 stage swapped for DDP and the FSDP stage really sharded (rank 0 holds half the values)
    d = records["d"]
    assert {c["cmd"] for c in d["commands"]} == {"run"} and len(d["commands"]) == (1 if cuda else 2)
    pretrain = {p["stage"]: p for p in d["pretrain"]}
    assert set(pretrain) == {"pretrain_zero2", "pretrain_fsdp"}
    assert pretrain["pretrain_zero2"]["launch"]["strategy"] == ("deepspeed" if cuda else "ddp")
    fsdp = pretrain["pretrain_fsdp"]
    assert fsdp["launch"]["preset"] == "fsdp_full_shard"
    if not cuda:
        assert fsdp["world_size"] == pretrain["pretrain_zero2"]["world_size"] == 2
        assert fsdp["strategy"] == "fsdp" and fsdp["fsdp_parameters_this_rank"] < fsdp["fsdp_parameters"]
        assert "pretrain_fsdp [fsdp_full_shard x 2 processes, rank 0 holds " in lines["d"]
    assert d["stages"]["eval_zero2"]["perplexity"] > 0 and d["stages"]["eval_fsdp"]["perplexity"] > 0
