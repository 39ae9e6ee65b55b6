"""The base of the preference-pair trainers (reward, dpo): a starting model
(the ``model`` input or ``model_name_or_path``) and preference pairs (the
``dataset`` input or ``data_path``), and the start both runs share."""

from __future__ import annotations

from typing import Any, NamedTuple, TypeVar

from recipe_runner import DATASET, PREFERENCE_DATASET, Input, StageContext

from ...common.models import MODEL_INPUT
from ..fine_tuning import FineTuningStage
from .params import PreferenceParams

PreferenceP = TypeVar("PreferenceP", bound=PreferenceParams)

PREFERENCE_INPUT = Input(
    DATASET,
    PREFERENCE_DATASET,
    description="preference pairs: columns chosen / rejected and optionally prompt "
    "(hh-rlhf's Human/Assistant texts are split into prompt / responses)",
)


class PreferenceStage(FineTuningStage[PreferenceP]):
    """Base of the preference-pair trainers: a model (or model_name_or_path) and pairs (or data_path)."""

    inputs = {"model": MODEL_INPUT, "dataset": PREFERENCE_INPUT}


class PreferenceRun(NamedTuple):
    """The start of a preference-pair training run."""

    base: str  # the starting model's directory or hub id
    train_pairs: Any
    held_out_pairs: Any  # None without held-out pairs
    tokenizer: Any


def start_preference_run(ctx: StageContext[Any], p: PreferenceParams, max_eval: int | None) -> PreferenceRun:
    """The starting model, torch seeded with the recipe's seed, the prepared
    train and held-out pairs (at most ``max_eval``) and the tokenizer."""
    import torch

    from ...common.models import load_tokenizer, resolve_model_path
    from .pairs import load_preference_splits

    base = resolve_model_path(ctx)
    torch.manual_seed(ctx.seed)
    train, held_out = load_preference_splits(ctx, p, max_eval)
    return PreferenceRun(base, train, held_out, load_tokenizer(base))
