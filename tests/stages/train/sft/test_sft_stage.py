"""sft stage: LoRA touches only adapter weights, merge == base+adapter, full
fine-tuning on chat data, QLoRA refusal on a CPU, bad input, resume from a
trainer checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from recipe_runner.artifacts import DATASET, Artifact
from recipe_runner.stage import PlanView, StageError
from recipe_runner.testing import run_stage
from recipe_runner_stages.train.sft.params import SFTParams
from recipe_runner_stages.train.sft.stage import SFTStage


def _state(path: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(str(path)).state_dict().items()}


def test_lora_changes_only_adapter_and_merge_equals_base_plus_adapter(
    tmp_path: Path, tiny_model: Artifact, alpaca_dataset: Artifact, fast: dict[str, Any]
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_before = _state(tiny_model.path)
    res = run_stage(
        SFTStage,
        {**fast, "method": "lora", "merge": True, "learning_rate": 1e-2, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        inputs={"model": tiny_model, "dataset": alpaca_dataset},
        workdir=tmp_path,
    )
    assert set(res.outputs) == {"adapter", "model"}
    m = res.metrics
    assert m["format"] == "alpaca" and m["train_steps"] == 4
    assert 0 < m["trainable_parameters"] < m["total_parameters"]
    assert m["eval_loss"] < m["eval_loss_before"]  # lr 1e-2 on a random model: the validation loss drops
    assert (res.outputs["adapter"].path / "samples.jsonl").is_file() and len(m["samples"]) == 1

    # the base model files are untouched, and inside base+adapter only LoRA tensors differ from the base
    assert all(torch.equal(v, base_before[k]) for k, v in _state(tiny_model.path).items())
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_model.path)), str(res.outputs["adapter"].path)
    )
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


def test_full_finetune_on_chat_messages_with_shipped_template(
    tmp_path: Path, tiny_model: Artifact, data_dir: Path, fast: dict[str, Any]
) -> None:
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    recs = json.loads((data_dir / "instruction-data.json").read_text())[:40]
    msgs = [
        {"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
        for r in recs
    ]
    dpath = tmp_path / "chat"
    DatasetDict({"train": Dataset.from_list(msgs)}).save_to_disk(str(dpath))
    before = _state(tiny_model.path)
    res = run_stage(
        SFTStage,
        {**fast, "method": "full", "chat_template": "chatml", "learning_rate": 1e-3, "max_steps": 2},
        inputs={"model": tiny_model, "dataset": Artifact(DATASET, dpath)},
        workdir=tmp_path / "run",
    )
    assert set(res.outputs) == {"model"} and res.metrics["format"] == "chat"
    after = _state(res.outputs["model"].path)
    assert sum(not torch.equal(after[k], before[k]) for k in before) > len(before) // 2
    tok = AutoTokenizer.from_pretrained(str(res.outputs["model"].path))
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|></s>\n<|im_start|>assistant\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_qlora_is_refused_without_a_gpu(
    tmp_path: Path, tiny_model: Artifact, alpaca_dataset: Artifact, fast: dict[str, Any]
) -> None:
    with pytest.raises(StageError, match="CUDA GPU"):
        run_stage(
            SFTStage,
            {**fast, "method": "qlora"},
            inputs={"model": tiny_model, "dataset": alpaca_dataset},
            workdir=tmp_path,
        )
    errs = SFTStage.cross_check(PlanView("sft", SFTParams(method="qlora", device="cpu")))
    assert errs and "CUDA" in errs[0]


def test_a_chat_template_that_is_neither_shipped_nor_a_file_is_refused_at_plan_time() -> None:
    assert SFTStage.cross_check(PlanView("sft", SFTParams(chat_template="zephyr"))) == []
    assert SFTStage.cross_check(PlanView("sft", SFTParams(chat_template="templates/mine.jinja"))) == []
    errs = SFTStage.cross_check(PlanView("sft", SFTParams(chat_template="llama-3")))
    assert len(errs) == 1 and "'llama-3' is neither a shipped template (chatml, zephyr)" in errs[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA needs a CUDA GPU and bitsandbytes")
def test_qlora_on_gpu(tmp_path: Path, tiny_model: Artifact, alpaca_dataset: Artifact, fast: dict[str, Any]) -> None:
    pytest.importorskip("bitsandbytes")
    res = run_stage(
        SFTStage,
        {**fast, "method": "qlora", "merge": True},
        inputs={"model": tiny_model, "dataset": alpaca_dataset},
        workdir=tmp_path,
    )
    assert set(res.outputs) == {"adapter", "model"} and res.metrics["train_steps"] == 4


def test_unknown_columns_give_a_clear_error(tmp_path: Path, tiny_model: Artifact, fast: dict[str, Any]) -> None:
    from datasets import Dataset, DatasetDict

    dpath = tmp_path / "d"
    DatasetDict({"train": Dataset.from_list([{"question": "q", "answer": "a"}] * 4)}).save_to_disk(str(dpath))
    with pytest.raises(StageError, match="question"):
        run_stage(
            SFTStage, fast, inputs={"model": tiny_model, "dataset": Artifact(DATASET, dpath)}, workdir=tmp_path / "run"
        )
    with pytest.raises(StageError, match=r"\['output'\]"):
        run_stage(
            SFTStage,
            {**fast, "format": "alpaca", "instruction_column": "question"},
            inputs={"model": tiny_model, "dataset": Artifact(DATASET, dpath)},
            workdir=tmp_path / "run2",
        )


def test_resumes_from_the_trainer_checkpoint(
    tmp_path: Path, tiny_model: Artifact, alpaca_dataset: Artifact, fast: dict[str, Any]
) -> None:
    common = {**fast, "save_steps": 2, "num_samples": 0, "eval_fraction": 0.0}
    inputs = {"model": tiny_model, "dataset": alpaca_dataset}
    first = run_stage(SFTStage, {**common, "max_steps": 2}, inputs=inputs, workdir=tmp_path)
    assert "resumed_from_step" not in first.metrics
    assert (tmp_path / "checkpoint" / "checkpoint-2").is_dir()
    second = run_stage(SFTStage, {**common, "max_steps": 4}, inputs=inputs, workdir=tmp_path)
    assert second.metrics["resumed_from_step"] == 2 and second.metrics["train_steps"] == 4


def test_the_adapter_and_merged_model_files_have_the_permissions_the_umask_gives(
    tmp_path: Path, tiny_model: Artifact, alpaca_dataset: Artifact, fast: dict[str, Any]
) -> None:
    """PEFT's save_pretrained writes adapter_model.safetensors 0600 (safetensors writes through a
    private temporary file); every committed file gets 0666 less the umask, as any new file does."""
    import os
    import stat

    before = os.umask(0o027)
    try:
        res = run_stage(
            SFTStage,
            {**fast, "max_steps": 1, "method": "lora", "merge": True, "num_samples": 0},
            inputs={"model": tiny_model, "dataset": alpaca_dataset},
            workdir=tmp_path,
        )
    finally:
        os.umask(before)
    for slot in ("adapter", "model"):
        out = res.outputs[slot].path
        modes = {str(f.relative_to(out)): stat.S_IMODE(f.stat().st_mode) for f in out.rglob("*") if f.is_file()}
        assert any(name.endswith(".safetensors") for name in modes), modes
        assert modes == dict.fromkeys(modes, 0o640), (slot, modes)
