"""What every preference-pair trainer (reward, dpo) reads: the starting
model, the pairs and their columns, the token limit and the held-out share."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..fine_tuning import FineTuningParams
from ..trainer_args import TrainingParams

HHFormat = Literal["auto", "always", "never"]

HH_DESC = (
    "split hh-rlhf style texts ('\\n\\nHuman: ...\\n\\nAssistant: ...') into prompt / responses (the prompt "
    "is the text up to the last '\\n\\nAssistant:'): auto = when the data has no prompt column and looks so"
)


class PreferenceParams(FineTuningParams, TrainingParams):
    """What every preference-pair trainer (reward, dpo) reads: the starting model and the pairs."""

    prompt_column: str = Field(
        "prompt", description="optional column with the shared prompt (hh-rlhf texts carry it inside chosen/rejected)"
    )
    chosen_column: str = Field("chosen", description="column with the preferred response (or full text)")
    rejected_column: str = Field("rejected", description="column with the dispreferred response (or full text)")
    hh_format: HHFormat = Field("auto", description=HH_DESC)
    max_length: int = Field(512, ge=8, description="token limit of prompt + response (longer pairs are truncated)")
    eval_fraction: float = Field(
        0.1, ge=0, lt=1, description="held-out share of the pairs when the dataset has no 'validation' split"
    )
