"""sft stage: LoRA touches only adapter weights, merge == base+adapter,
completion-only masking, full fine-tuning on chat data, QLoRA refusal on a
CPU, bad input, resume from a trainer checkpoint."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from recipe_runner.artifacts import DATASET, Artifact
from recipe_runner.stage import StageContext, StageError
from recipe_runner.testing import run_stage
from recipe_runner_stages.common.prompts import alpaca_prompt
from recipe_runner_stages.train.sft import SFTParams, SFTStage, build_sft_trainer

FAST = {"max_steps": 4, "per_device_train_batch_size": 4, "max_length": 128, "logging_steps": 1,
        "save_steps": 100, "num_samples": 1, "sample_max_new_tokens": 8, "max_eval_samples": 8}


def _state(path):
    from transformers import AutoModelForCausalLM

    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(str(path)).state_dict().items()}


def test_lora_changes_only_adapter_and_merge_equals_base_plus_adapter(tmp_path, tiny_model, alpaca_dataset):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_before = _state(tiny_model.path)
    res = run_stage(SFTStage, {**FAST, "method": "lora", "merge": True, "learning_rate": 1e-2,
                               "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
                    inputs={"model": tiny_model, "dataset": alpaca_dataset}, workdir=tmp_path)
    assert set(res.outputs) == {"adapter", "model"}
    m = res.metrics
    assert m["format"] == "alpaca" and m["train_steps"] == 4
    assert 0 < m["trainable_parameters"] < m["total_parameters"]
    assert m["eval_loss"] < m["eval_loss_before"]  # lr 1e-2 on a random model: the validation loss drops
    assert (res.outputs["adapter"].path / "samples.jsonl").is_file() and len(m["samples"]) == 1

    # the base model files are untouched, and inside base+adapter only LoRA tensors differ from the base
    assert all(torch.equal(v, base_before[k]) for k, v in _state(tiny_model.path).items())
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model.path)),
                                           str(res.outputs["adapter"].path))
    lora_b_norm = 0.0
    for name, t in peft_model.named_parameters():
        if "lora_" in name:
            if "lora_B" in name:
                lora_b_norm += t.abs().sum().item()
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(t, base_before[key]), name
    assert lora_b_norm > 0  # lora_B starts at zero: training moved it

    # merged standalone model == base + adapter
    merged = AutoModelForCausalLM.from_pretrained(str(res.outputs["model"].path)).eval()
    peft_model.eval()
    ids = torch.randint(4, 500, (2, 24))
    with torch.no_grad():
        a, b = merged(ids).logits, peft_model(ids).logits
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model.path)).eval()(ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, base, atol=1e-4)
    assert res.outputs["model"].meta["num_layers"] == 2


def _ctx(tmp_path, params, inputs):
    (tmp_path / "out").mkdir(parents=True, exist_ok=True)
    (tmp_path / "ckpt").mkdir(exist_ok=True)
    return StageContext(name="sft", params=SFTParams.model_validate(params), inputs=inputs,
                        output_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt", seed=0,
                        log=logging.getLogger("test"))


def test_completion_only_masks_exactly_the_prompt(tmp_path, tiny_model, alpaca_dataset, data_dir):
    from transformers import AutoTokenizer

    ctx = _ctx(tmp_path, {**FAST, "eval_fraction": 0.0}, {"model": tiny_model, "dataset": alpaca_dataset})
    trainer, tok, train_ds, *_ = build_sft_trainer(ctx, str(tiny_model.path))
    prepared = trainer.train_dataset
    records = json.loads((data_dir / "instruction-data.json").read_text())[:96]
    expected_prompts = {alpaca_prompt(r["instruction"], r["input"]): r["output"] for r in records}
    tok2 = AutoTokenizer.from_pretrained(str(tiny_model.path))
    checked = 0
    for i in range(8):
        row = prepared[i]
        prompt = row["prompt"]
        assert expected_prompts[prompt] == row["completion"].removesuffix(tok2.eos_token)
        prompt_ids = tok2(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tok2(prompt + row["completion"], add_special_tokens=False)["input_ids"][:128]
        n = len(prompt_ids)
        assert row["input_ids"] == full_ids
        labels = row["labels"]
        assert all(x == -100 for x in labels[:n]), "a prompt token is not masked"
        assert labels[n:] == row["input_ids"][n:], "a completion token is masked"
        assert len(labels) > n
        checked += 1
    assert checked == 8

    ctx2 = _ctx(tmp_path / "b", {**FAST, "eval_fraction": 0.0, "completion_only_loss": False},
                {"model": tiny_model, "dataset": alpaca_dataset})
    trainer2, *_ = build_sft_trainer(ctx2, str(tiny_model.path))
    assert trainer2.train_dataset[0]["labels"] == trainer2.train_dataset[0]["input_ids"]


def test_full_finetune_on_chat_messages_with_shipped_template(tmp_path, tiny_model, data_dir):
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    recs = json.loads((data_dir / "instruction-data.json").read_text())[:40]
    msgs = [{"messages": [{"role": "user", "content": r["instruction"]},
                          {"role": "assistant", "content": r["output"]}]} for r in recs]
    dpath = tmp_path / "chat"
    DatasetDict({"train": Dataset.from_list(msgs)}).save_to_disk(str(dpath))
    before = _state(tiny_model.path)
    res = run_stage(SFTStage, {**FAST, "method": "full", "chat_template": "chatml", "learning_rate": 1e-3,
                               "max_steps": 2},
                    inputs={"model": tiny_model, "dataset": Artifact(DATASET, dpath)}, workdir=tmp_path / "run")
    assert set(res.outputs) == {"model"} and res.metrics["format"] == "chat"
    after = _state(res.outputs["model"].path)
    assert sum(not torch.equal(after[k], before[k]) for k in before) > len(before) // 2
    tok = AutoTokenizer.from_pretrained(str(res.outputs["model"].path))
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|></s>\n<|im_start|>assistant\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_qlora_is_refused_without_a_gpu(tmp_path, tiny_model, alpaca_dataset):
    with pytest.raises(StageError, match="CUDA GPU"):
        run_stage(SFTStage, {**FAST, "method": "qlora"}, inputs={"model": tiny_model, "dataset": alpaca_dataset},
                  workdir=tmp_path)
    errs = SFTStage.cross_check(type("V", (), {"name": "sft", "params": SFTParams(method="qlora", device="cpu")})())
    assert errs and "CUDA" in errs[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA needs a CUDA GPU and bitsandbytes")
def test_qlora_on_gpu(tmp_path, tiny_model, alpaca_dataset):
    pytest.importorskip("bitsandbytes")
    res = run_stage(SFTStage, {**FAST, "method": "qlora", "merge": True},
                    inputs={"model": tiny_model, "dataset": alpaca_dataset}, workdir=tmp_path)
    assert set(res.outputs) == {"adapter", "model"} and res.metrics["train_steps"] == 4


def test_unknown_columns_give_a_clear_error(tmp_path, tiny_model):
    from datasets import Dataset, DatasetDict

    dpath = tmp_path / "d"
    DatasetDict({"train": Dataset.from_list([{"question": "q", "answer": "a"}] * 4)}).save_to_disk(str(dpath))
    with pytest.raises(StageError, match="question"):
        run_stage(SFTStage, FAST, inputs={"model": tiny_model, "dataset": Artifact(DATASET, dpath)},
                  workdir=tmp_path / "run")
    with pytest.raises(StageError, match=r"\['output'\]"):
        run_stage(SFTStage, {**FAST, "format": "alpaca", "instruction_column": "question"},
                  inputs={"model": tiny_model, "dataset": Artifact(DATASET, dpath)}, workdir=tmp_path / "run2")


def test_resumes_from_the_trainer_checkpoint(tmp_path, tiny_model, alpaca_dataset):
    common = {**FAST, "save_steps": 2, "num_samples": 0, "eval_fraction": 0.0}
    first = run_stage(SFTStage, {**common, "max_steps": 2}, inputs={"model": tiny_model, "dataset": alpaca_dataset},
                      workdir=tmp_path)
    assert "resumed_from_step" not in first.metrics
    assert (tmp_path / "checkpoint" / "checkpoint-2").is_dir()
    second = run_stage(SFTStage, {**common, "max_steps": 4}, inputs={"model": tiny_model, "dataset": alpaca_dataset},
                       workdir=tmp_path)
    assert second.metrics["resumed_from_step"] == 2 and second.metrics["train_steps"] == 4


def test_sft_on_the_chosen_side_of_hh_rlhf_pairs(tmp_path, tiny_model, hh_dataset):
    ctx = _ctx(tmp_path, {**FAST, "eval_fraction": 0.0, "max_length": 512}, {"model": tiny_model, "dataset": hh_dataset})
    trainer, tok, train_ds, *_ = build_sft_trainer(ctx, str(tiny_model.path))
    from datasets import load_from_disk

    raw = load_from_disk(str(hh_dataset.path))["train"]
    assert len(train_ds) == len(raw)
    for row, orig in zip(train_ds.select(range(5)), raw.select(range(5))):
        assert row["prompt"].endswith("\n\nAssistant:") and row["prompt"] + row["completion"] == orig["chosen"]
    row = trainer.train_dataset[0]
    n = len(tok(row["prompt"], add_special_tokens=False)["input_ids"])
    assert all(x == -100 for x in row["labels"][:n]) and row["labels"][n:] == row["input_ids"][n:]
