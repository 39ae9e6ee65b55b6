"""fine_tuning.py: the local files and directories a fine-tuning stage's
paths name enter its key (hub ids do not), and its model outputs keep the
starting model's facts."""

from __future__ import annotations

from pathlib import Path

from recipe_runner.artifacts import MAX_POSITIONS, VOCAB_SIZE
from recipe_runner_stages.train.dpo.stage import DPOParams, DPOStage
from recipe_runner_stages.train.ppo.params import PPOParams
from recipe_runner_stages.train.ppo.stage import PPOStage
from recipe_runner_stages.train.reward.stage import RewardParams, RewardStage
from recipe_runner_stages.train.sft.params import SFTParams
from recipe_runner_stages.train.sft.stage import SFTStage


def test_local_paths_are_local_inputs_and_hub_ids_are_not(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"chosen": "a", "rejected": "b"}\n')
    local = DPOParams(model_name_or_path=str(tiny_model_dir), data_path=str(data))
    assert DPOStage.local_inputs(local) == {"model_name_or_path": tiny_model_dir, "data_path": data}
    assert DPOStage.local_inputs(DPOParams(model_name_or_path="org/some-model")) == {}

    template = tmp_path / "chat.jinja"
    template.write_text("{{ messages }}")
    assert SFTStage.local_inputs(SFTParams(chat_template=str(template))) == {"chat_template": template}
    assert SFTStage.local_inputs(SFTParams(chat_template="chatml")) == {}

    ppo = PPOParams(reward_model_name_or_path=str(tiny_model_dir), model_name_or_path="org/policy")
    assert PPOStage.local_inputs(ppo) == {"reward_model_name_or_path": tiny_model_dir}
    assert "reward_model" not in PPOStage.input_slots(ppo) and "model" not in PPOStage.input_slots(ppo)


def test_model_outputs_keep_the_starting_model_facts() -> None:
    facts = {"model": {MAX_POSITIONS: 512, VOCAB_SIZE: 2048}, "dataset": {}}
    assert RewardStage.output_facts(RewardParams(), facts) == {"reward_model": facts["model"]}
    assert DPOStage.output_facts(DPOParams(), facts) == {"model": facts["model"]}
    assert SFTStage.output_facts(SFTParams(method="full"), facts) == {"model": facts["model"]}
    assert SFTStage.output_facts(SFTParams(method="lora"), facts) == {}  # an adapter is not a model
    assert PPOStage.output_facts(PPOParams(), {}) == {"model": {}}  # model_name_or_path: nothing known
