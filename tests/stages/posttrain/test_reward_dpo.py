"""reward and dpo stages on real preference data formats: hh-rlhf
splitting, a reward model that learns a separable preference, DPO widening
the chosen-vs-rejected margin, clear errors for bad columns."""
from __future__ import annotations

import gzip
import json
import logging

import pytest
import torch

from recipe_runner.artifacts import DATASET, PREFERENCE_DATASET, Artifact
from recipe_runner.stage import StageContext, StageError
from recipe_runner.testing import run_stage
from recipe_runner_stages.train.dpo import DPOStage
from recipe_runner_stages.train.posttrain_common import HH_ASSISTANT, prepare_preferences, split_hh
from recipe_runner_stages.train.reward import RewardStage


def test_hh_rlhf_pairs_are_split_at_the_last_assistant_turn(data_dir):
    from datasets import Dataset

    with gzip.open(data_dir / "hh-rlhf-harmless-base-test.jsonl.gz", "rt") as f:
        recs = [json.loads(line) for _, line in zip(range(200), f)]
    ctx = StageContext(name="reward", params=None, inputs={}, output_dir=data_dir, checkpoint_dir=data_dir, seed=0,
                       log=logging.getLogger("t"))
    ds = prepare_preferences(Dataset.from_list(recs), ctx, "train")
    assert sorted(ds.column_names) == ["chosen", "prompt", "rejected"]
    # independent check of each kept row against the raw texts
    kept = {(r["prompt"] + r["chosen"]) for r in ds}
    n_ok = 0
    for r in recs:
        i = r["chosen"].rfind("\n\nAssistant:")
        prompt = r["chosen"][: i + len("\n\nAssistant:")]
        if r["rejected"].startswith(prompt):
            n_ok += 1
            assert r["chosen"] in kept
    assert len(ds) == n_ok == 200 - ctx.metrics["hh_pairs_dropped_train"]
    assert all(p.endswith(HH_ASSISTANT) and HH_ASSISTANT not in c for p, c in zip(ds["prompt"], ds["chosen"]))
    assert split_hh("no markers here") is None


def test_reward_model_learns_a_separable_preference(tmp_path, tiny_model, separable_prefs):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    res = run_stage(RewardStage, {"num_train_epochs": 1, "learning_rate": 2e-3, "per_device_train_batch_size": 8,
                                  "max_length": 80, "logging_steps": 5},
                    inputs={"model": tiny_model, "dataset": separable_prefs}, workdir=tmp_path)
    m = res.metrics
    assert m["train_pairs"] == 100 and m["eval_pairs"] == 20
    assert m["eval_accuracy"] >= 0.85, m
    assert m["eval_margin"] > m["eval_margin_before"]
    out = res.outputs["reward_model"]
    assert out.kind == "reward_model" and out.meta["eval_accuracy"] == m["eval_accuracy"]
    rm = AutoModelForSequenceClassification.from_pretrained(str(out.path))
    tok = AutoTokenizer.from_pretrained(str(out.path))
    assert rm.config.num_labels == 1 and tok.pad_token is not None and rm.config.pad_token_id == tok.pad_token_id
    enc = tok(["Say something\nAnswer: of the picture and the", "Say something\nAnswer: 3 1 4 1 5 9 2 6"],
              return_tensors="pt", padding=True)
    with torch.no_grad():
        prose, digits = rm(**enc).logits[:, 0].tolist()
    assert prose > digits


def test_preference_columns_are_checked(tmp_path, tiny_model):
    from datasets import Dataset, DatasetDict

    d = tmp_path / "d"
    DatasetDict({"train": Dataset.from_list([{"text": "a", "good": "b"}] * 4)}).save_to_disk(str(d))
    for stage in (RewardStage, DPOStage):
        with pytest.raises(StageError, match="chosen"):
            run_stage(stage, {"max_steps": 1}, inputs={"model": tiny_model, "dataset": Artifact(DATASET, d)},
                      workdir=tmp_path / stage.name)


def test_dpo_widens_the_chosen_rejected_margin(tmp_path, tiny_model, separable_prefs):
    from transformers import AutoModelForCausalLM

    pref = Artifact(PREFERENCE_DATASET, separable_prefs.path)
    res = run_stage(DPOStage, {"max_steps": 8, "learning_rate": 2e-3, "beta": 0.1, "per_device_train_batch_size": 8,
                               "max_length": 64, "logging_steps": 4},
                    inputs={"model": tiny_model, "dataset": pref}, workdir=tmp_path)
    m = res.metrics
    assert m["before_rewards_margins"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at the start
    assert m["after_rewards_margins"] > 0.5, m
    assert m["after_rewards_accuracies"] >= 0.9
    assert m["after_loss"] < m["before_loss"]
    out = AutoModelForCausalLM.from_pretrained(str(res.outputs["model"].path))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model.path))
    assert any(not torch.equal(a, b) for a, b in zip(out.state_dict().values(), base.state_dict().values()))


def test_data_path_reads_structured_files_directly(tmp_path, data_dir):
    from recipe_runner_stages.train.posttrain_common import load_stage_dataset
    from recipe_runner_stages.train.reward import RewardParams
    from recipe_runner_stages.train.sft import SFTParams, SFTStage

    p = RewardParams(data_path=str(data_dir / "hh-rlhf-harmless-base-test.jsonl.gz"))
    assert "dataset" not in RewardStage.input_slots(p) and "model" in RewardStage.input_slots(p)
    assert RewardStage.fingerprint_extra(p)["size"] == (data_dir / "hh-rlhf-harmless-base-test.jsonl.gz").stat().st_size
    ctx = StageContext(name="reward", params=p, inputs={}, output_dir=tmp_path, checkpoint_dir=tmp_path, seed=0,
                       log=logging.getLogger("t"))
    dsd = load_stage_dataset(ctx)
    assert len(dsd["train"]) == 2312 and {"chosen", "rejected"} <= set(dsd["train"].column_names)
    sp = SFTParams(data_path=str(data_dir / "instruction-data.json"), model_name_or_path="x")
    assert set(SFTStage.input_slots(sp)) == set()
    ctx = StageContext(name="sft", params=sp, inputs={}, output_dir=tmp_path, checkpoint_dir=tmp_path, seed=0,
                       log=logging.getLogger("t"))
    assert load_stage_dataset(ctx)["train"][0] == json.loads((data_dir / "instruction-data.json").read_text())[0]
    with pytest.raises(StageError, match="not a file"):
        load_stage_dataset(StageContext(name="sft", params=SFTParams(data_path=str(tmp_path / "nope.json")),
                                        inputs={}, output_dir=tmp_path, checkpoint_dir=tmp_path, seed=0,
                                        log=logging.getLogger("t")))
