"""What the fine-tuning stages (sft, reward, dpo, ppo) share: they start from
a model -- the ``model`` input, or ``model_name_or_path`` -- and learn from
examples -- the ``dataset`` input, or a ``data_path`` file; a local file or
directory named so enters the stage's key by its content -- and the models
they write keep the starting model's facts (fine-tuning changes neither its
context length nor its vocabulary)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from pydantic import ConfigDict, Field

from recipe_runner import MODEL, REWARD_MODEL, Facts, Input, Params, Stage

from ..common.models import MODEL_PATH_DESC, local_path, model_input_slots

DATA_PATH_DESC = (
    "read the examples straight from a local .json / .jsonl / .csv / .parquet file (optionally .gz), "
    "keeping every column (e.g. instruction/input/output or chosen/rejected); when set, the stage "
    "takes no 'dataset' input"
)


class FineTuningParams(Params):
    """The starting model and the examples, by path (each replaces its input);
    the stages' infinite and NaN floats are refused."""

    model_config = ConfigDict(allow_inf_nan=False)

    model_name_or_path: str | None = Field(None, description=MODEL_PATH_DESC)
    data_path: str | None = Field(None, description=DATA_PATH_DESC)


FineTuningP = TypeVar("FineTuningP", bound=FineTuningParams)


class FineTuningStage(Stage[FineTuningP]):
    """Base of the fine-tuning stages: input slots less those the recipe
    replaces by a path, the local files the paths name, and the starting
    model's facts on every model output."""

    @classmethod
    def input_slots(cls, params: FineTuningP) -> Mapping[str, Input]:
        slots = model_input_slots(params, dict(cls.inputs))
        if params.data_path:
            slots.pop("dataset", None)
        return slots

    @classmethod
    def local_inputs(cls, params: FineTuningP) -> Mapping[str, Path]:
        """The data_path file and a local model_name_or_path directory (a hub id is not local)."""
        named = {"model_name_or_path": params.model_name_or_path, "data_path": params.data_path}
        return {field: path for field, ref in named.items() if (path := local_path(ref)) is not None}

    @classmethod
    def output_facts(cls, params: FineTuningP, inputs: Mapping[str, Facts]) -> Mapping[str, Facts]:
        model = inputs.get("model", {})
        return {name: model for name, kind in cls.output_slots(params).items() if kind in (MODEL, REWARD_MODEL)}
