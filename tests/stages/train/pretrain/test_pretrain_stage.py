"""pretrain stage: the loss goes down, validation loss / perplexity / tokens/s and the
loss curve are reported, layer freezing freezes, a SIGKILLed run resumes from
its last checkpoint and ends where an uninterrupted run ends, data of another
tokenizer than the model's is refused, and the saved files follow the umask.
(The non-finite stop and a kill mid-save are tested through `recipe run` in
test_pretrain_cli.py.)"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from recipe_runner.artifacts import MAX_POSITIONS, PACKED_DATASET, SEQ_LENGTH, TOKENIZER, Artifact
from recipe_runner.stage import Params, PlanView, StageError, Upstream
from recipe_runner.testing import run_stage
from recipe_runner_stages.train.pretrain.params import PretrainParams
from recipe_runner_stages.train.pretrain.stage import PretrainStage

# one CPU thread: on a shared 2-core host two OpenMP threads spin-wait for each other (20x slower)
FAST = {
    "per_device_train_batch_size": 4,
    "learning_rate": 3e-3,
    "logging_steps": 5,
    "precision": "fp32",
    "device": "cpu",
    "cpu_threads": 1,
}


def _validation_loss(model_dir: Path, packed_dir: Path) -> float:
    """Mean next-token loss on the validation rows, straight from the model."""
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    ids = torch.tensor(load_from_disk(str(packed_dir))["validation"]["input_ids"])
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def test_pretrain_lowers_loss_and_reports(init_model, packed, packed_dir, tmp_path):
    before = _validation_loss(init_model.path, packed_dir)
    res = run_stage(
        PretrainStage,
        {**FAST, "max_steps": 40, "eval_steps": 20, "save_steps": 100},
        inputs={"model": init_model, "dataset": packed},
        workdir=tmp_path,
    )
    m = res.metrics
    out = res.outputs["model"].path
    after = _validation_loss(out, packed_dir)
    assert after < before - 0.5, (before, after)
    assert m["global_step"] == 40 and m["tokens_trained"] == 40 * 4 * 32
    assert m["final_train_loss"] < m["first_train_loss"]
    # the stage's validation loss is the model's loss on the validation rows (full fixed-length rows)
    assert m["eval_loss"] == pytest.approx(after, rel=1e-4)
    assert m["perplexity"] == pytest.approx(math.exp(after), rel=1e-4)
    assert [s for s, *_ in m["eval_curve"]] == [20, 40]  # [step, loss, perplexity] every eval_steps
    assert all(p == pytest.approx(math.exp(loss), rel=1e-3) for _, loss, p in m["eval_curve"])
    assert m["tokens_per_second"] > 0 and len(m["loss_curve"]) == 8
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert (out / "tokenizer.json").is_file() and not (out / "training_args.bin").exists()
    history = json.loads((out / "trainer_history.json").read_text())
    assert [h["step"] for h in history if "eval_loss" in h] == [20, 40]  # the last step is validated once


def test_layer_freezing(init_model, packed, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    res = run_stage(
        PretrainStage,
        {**FAST, "max_steps": 3, "save_steps": 100, "train_top_layers": 1, "freeze_embeddings": True},
        inputs={"model": init_model, "dataset": packed},
        workdir=tmp_path,
    )
    before = AutoModelForCausalLM.from_pretrained(str(init_model.path))
    after = AutoModelForCausalLM.from_pretrained(str(res.outputs["model"].path))
    frozen = [n for n, _ in before.named_parameters() if n.startswith(("model.layers.0.", "model.embed_tokens"))]
    trained = [n for n, _ in before.named_parameters() if n.startswith(("model.layers.1.", "lm_head"))]
    for n in frozen:
        assert torch.equal(before.get_parameter(n), after.get_parameter(n)), n
    for n in trained:
        if n.endswith("layernorm.weight"):
            continue
        assert not torch.equal(before.get_parameter(n), after.get_parameter(n)), n
    expected = sum(before.get_parameter(n).numel() for n in trained) + before.model.norm.weight.numel()
    assert res.metrics["trainable_parameters"] == expected


def test_rows_longer_than_positions_fail(tmp_path, tiny_tokenizer_dir, packed, tiny_config):
    from recipe_runner_stages.model.init import InitStage

    short = run_stage(
        InitStage,
        {"config": {**tiny_config, "max_position_embeddings": 16}},
        inputs={"tokenizer": Artifact(TOKENIZER, tiny_tokenizer_dir)},
        workdir=tmp_path / "i",
    )
    with pytest.raises(StageError, match="exceed the model's max_position_embeddings"):
        run_stage(
            PretrainStage,
            {**FAST, "max_steps": 1},
            inputs={"model": short.outputs["model"], "dataset": packed},
            workdir=tmp_path / "p",
        )


RUNNER = textwrap.dedent("""
    import sys, json, logging
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from recipe_runner.artifacts import Artifact
    from recipe_runner.testing import run_stage
    from recipe_runner_stages.train.pretrain.stage import PretrainStage
    model, data, work, params = sys.argv[1:5]
    res = run_stage(PretrainStage, json.loads(params), inputs={"model": Artifact("model", model),
                    "dataset": Artifact("packed_dataset", data)}, workdir=work)
    print(json.dumps({k: v for k, v in res.metrics.items() if not isinstance(v, list)}))
""")


def _run(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


def _uninterrupted_weights(init_model: Artifact, packed_dir: Path, params: dict, workdir: Path) -> dict:
    """The weights the same training ends with when no checkpoint interrupts it."""
    from safetensors.torch import load_file

    straight = run_stage(
        PretrainStage,
        {**params, "save_steps": 1000},
        inputs={"model": init_model, "dataset": Artifact(PACKED_DATASET, packed_dir)},
        workdir=workdir,
    )
    return load_file(str(straight.outputs["model"].path / "model.safetensors"))


def test_kill_and_resume(init_model, packed_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    params = {**FAST, "max_steps": 60, "save_steps": 5, "save_total_limit": 2}
    work = tmp_path / "killed"
    args = [str(init_model.path), str(packed_dir), str(work), json.dumps(params)]
    proc = _run(args)
    ckpt_dir = work / "checkpoint"
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        states = list(ckpt_dir.glob("checkpoint-*/trainer_state.json")) if ckpt_dir.exists() else []
        if states:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            killed_at = time.time()
            break
        time.sleep(0.02)
    assert killed_at is not None, f"the run ended before a checkpoint was seen: {proc.communicate()}"
    done = sorted(int(p.parent.name.split("-")[1]) for p in ckpt_dir.glob("checkpoint-*/trainer_state.json"))
    assert done and done[-1] < 60
    assert not (work / "output" / "model" / "model.safetensors").exists()

    resumed = _run(args)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    metrics = json.loads(out.strip().splitlines()[-1])
    assert metrics["resumed_from_step"] == done[-1]
    assert metrics["global_step"] == 60 and metrics["steps_this_run"] == 60 - done[-1]
    assert f"(step {done[-1]})" in err and "resuming from checkpoint" in err

    # the same training without the interruption ends with the same weights (optimizer, scheduler, RNG
    # and data position were restored)
    a = load_file(str(work / "output" / "model" / "model.safetensors"))
    b = _uninterrupted_weights(init_model, packed_dir, params, tmp_path / "straight")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_checkpoint_at_max_steps_is_not_trained_further(init_model, packed, tmp_path):
    """Killed after the last checkpoint but before the output was written: the re-run takes the
    checkpoint as it is (resuming there would make transformers run a step past max_steps)."""
    import shutil

    from safetensors.torch import load_file

    params = {**FAST, "max_steps": 3, "save_steps": 3}
    first = run_stage(PretrainStage, params, inputs={"model": init_model, "dataset": packed}, workdir=tmp_path)
    weights = load_file(str(first.outputs["model"].path / "model.safetensors"))
    shutil.rmtree(tmp_path / "output")
    again = run_stage(PretrainStage, params, inputs={"model": init_model, "dataset": packed}, workdir=tmp_path)
    assert again.metrics["resumed_from_step"] == 3 and again.metrics["global_step"] == 3
    assert again.metrics["steps_this_run"] == 0
    assert again.metrics["eval_loss"] == pytest.approx(first.metrics["eval_loss"], rel=1e-6)
    reloaded = load_file(str(again.outputs["model"].path / "model.safetensors"))
    assert all(weights[k].equal(reloaded[k]) for k in weights)


def test_gradient_checkpointing_gives_the_same_weights(init_model, packed, tmp_path):
    """Activation (gradient) checkpointing recomputes activations; the trained
    weights must equal those of a run without it."""
    import torch
    from safetensors.torch import load_file

    outs = []
    for gc in (False, True):
        res = run_stage(
            PretrainStage,
            {**FAST, "max_steps": 4, "save_steps": 100, "gradient_checkpointing": gc},
            inputs={"model": init_model, "dataset": packed},
            workdir=tmp_path / f"gc{gc}",
        )
        outs.append(load_file(str(res.outputs["model"].path / "model.safetensors")))
    assert outs[0].keys() == outs[1].keys()
    for k in outs[0]:
        torch.testing.assert_close(outs[0][k], outs[1][k], rtol=1e-4, atol=1e-5)


def test_rows_longer_than_the_upstream_positions_fail_at_plan_time():
    """The cross-check reads the pack stage's and the model's output facts."""

    def view(seq_len: int, max_pos: int) -> PlanView[PretrainParams]:
        return PlanView(
            "pretrain",
            PretrainParams(),
            {
                "dataset": Upstream("pack", "pack", Params(), {SEQ_LENGTH: seq_len}),
                "model": Upstream("init", "init", Params(), {MAX_POSITIONS: max_pos}),
            },
        )

    errors = PretrainStage.cross_check(view(128, 64))
    assert len(errors) == 1 and "packed rows of 128 tokens exceed the model's max_position_embeddings (64)" in errors[0]
    assert PretrainStage.cross_check(view(64, 64)) == []
    assert PretrainStage.output_facts(PretrainParams(), {"model": {MAX_POSITIONS: 64}}) == {
        "model": {MAX_POSITIONS: 64}
    }


def test_cpu_threads_is_a_run_setting_that_leaves_the_output_unchanged(init_model, packed, tmp_path):
    """cpu_threads stays out of the stage's key: 1 and 2 threads write byte-identical files (the
    trainer history compared without its wall-clock fields, which differ between any two runs)."""
    import hashlib

    from recipe_runner.keys import run_settings

    timing = ("runtime", "per_second")

    def written(threads: int) -> tuple[dict[str, str], list[dict[str, float]]]:
        params = {**FAST, "max_steps": 6, "logging_steps": 2, "cpu_threads": threads}
        inputs = {"model": init_model, "dataset": packed}
        out = run_stage(PretrainStage, params, inputs=inputs, workdir=tmp_path / f"t{threads}").outputs["model"].path
        files = [f for f in sorted(out.rglob("*")) if f.is_file() and f.name != "trainer_history.json"]
        history = json.loads((out / "trainer_history.json").read_text())
        steps = [{k: v for k, v in h.items() if not any(t in k for t in timing)} for h in history]
        return {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}, steps

    assert run_settings(PretrainParams(cpu_threads=2)) == {"cpu_threads": 2}
    one, two = written(1), written(2)
    assert "model.safetensors" in one[0] and one == two


def _init_with(tokenizer_dir: Path, tiny_config: dict, workdir: Path) -> Artifact:
    from recipe_runner_stages.model.init import InitStage

    res = run_stage(
        InitStage, {"config": tiny_config}, inputs={"tokenizer": Artifact(TOKENIZER, tokenizer_dir)}, workdir=workdir
    )
    return res.outputs["model"]


def test_data_of_another_tokenizer_with_the_same_vocabulary_size_is_refused_before_training(
    tmp_path, packed_dir, tiny_tokenizer_dir, shakespeare_tokenizer_dir, tiny_config
):
    """The issue's case: the data was tokenized with one tokenizer, the model carries another of the same
    vocabulary size (every id fits, so only the digests tell them apart).  Known from the model's meta
    (recorded by init) or, without it, from the tokenizer in the model's directory."""
    from recipe_runner_stages.common.models import load_tokenizer
    from recipe_runner_stages.common.tokenizer_digest import TOKENIZER_DIGEST, tokenizer_digest

    data_digest = tokenizer_digest(load_tokenizer(tiny_tokenizer_dir))
    data = Artifact(PACKED_DATASET, packed_dir, meta={"vocab_size": 512, TOKENIZER_DIGEST: data_digest})
    model = _init_with(shakespeare_tokenizer_dir, tiny_config, tmp_path / "init")
    model_digest = model.meta[TOKENIZER_DIGEST]
    assert model_digest != data_digest and model.meta["vocab_size"] == 512
    unrecorded = Artifact(model.kind, model.path, meta={k: v for k, v in model.meta.items() if k != TOKENIZER_DIGEST})
    for i, m in enumerate((model, unrecorded)):
        with pytest.raises(StageError) as err:
            run_stage(
                PretrainStage,
                {**FAST, "max_steps": 2},
                inputs={"model": m, "dataset": data},
                workdir=tmp_path / f"p{i}",
            )
        msg = str(err.value)
        assert f"was tokenized with tokenizer {data_digest[:12]} (vocabulary 512)" in msg, msg
        assert f"carries tokenizer {model_digest[:12]} (vocabulary 512)" in msg, msg
        assert "Tokenize with the model's tokenizer" in msg and "the init stage's `tokenizer` parameter" in msg
        assert (
            not list((tmp_path / f"p{i}").rglob("checkpoint-*"))
            and not (tmp_path / f"p{i}" / "output" / "model").exists()
        )

    # the same tokenizer on both sides: it trains, and the output model records the digest
    same = _init_with(tiny_tokenizer_dir, tiny_config, tmp_path / "same")
    res = run_stage(
        PretrainStage, {**FAST, "max_steps": 1}, inputs={"model": same, "dataset": data}, workdir=tmp_path / "ok"
    )
    assert res.outputs["model"].meta[TOKENIZER_DIGEST] == data_digest


def test_token_ids_past_the_models_vocabulary_are_refused(tmp_path, packed, tiny_config):
    """Rows holding ids up to 511 and a model of 300 tokens (no digests to compare): refused before training."""
    from recipe_runner_stages.model.init import InitStage

    model = run_stage(InitStage, {"config": tiny_config, "vocab_size": 300}, workdir=tmp_path / "init").outputs["model"]
    with pytest.raises(StageError, match=r"holds token id \d{3} but the model's vocabulary has 300 tokens") as err:
        run_stage(
            PretrainStage, {**FAST, "max_steps": 2}, inputs={"model": model, "dataset": packed}, workdir=tmp_path / "p"
        )
    assert "(ids 0 to 299)" in str(err.value) and not list((tmp_path / "p").rglob("checkpoint-*"))


def test_a_distributed_save_gives_every_file_the_permissions_the_umask_gives(init_model, make_context, tmp_path):
    """Under FSDP / DeepSpeed the weights come from trainer.save_model, which writes model.safetensors
    0600 (through a private temporary file); the committed directory gets 0666 less the umask throughout."""
    import stat

    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from recipe_runner_stages.common.models import load_tokenizer
    from recipe_runner_stages.train.pretrain.outputs import is_distributed, save_trained_model

    model = AutoModelForCausalLM.from_pretrained(str(init_model.path))
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "t"), report_to=[], use_cpu=True))
    ctx = make_context(PretrainParams(fsdp="full_shard"), name="pretrain")
    assert is_distributed(ctx, trainer)  # the trainer.save_model path
    history = [{"loss": 5.0, "step": 1}, {"loss": 4.0, "step": 2}]
    before = os.umask(0o027)
    try:
        out = save_trained_model(ctx, trainer, model, load_tokenizer(init_model.path), "float32", history)
    finally:
        os.umask(before)
    modes = {str(f.relative_to(out)): stat.S_IMODE(f.stat().st_mode) for f in out.rglob("*") if f.is_file()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "trainer_history.json"} <= set(modes), modes
    assert modes == dict.fromkeys(modes, 0o640), modes
    assert AutoModelForCausalLM.from_pretrained(str(out)).config.num_hidden_layers == 2
