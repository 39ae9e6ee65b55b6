"""Plan-time facts a deployed form of a model keeps from its source (a
quantized copy, an exported directory): its context length and vocabulary."""

from __future__ import annotations

from collections.abc import Mapping

from recipe_runner import Facts
from recipe_runner.artifacts import MAX_POSITIONS, VOCAB_SIZE

#: facts of the source model that hold for its deployed forms
KEPT_FACTS = (MAX_POSITIONS, VOCAB_SIZE)


def kept_model_facts(inputs: Mapping[str, Facts], slot: str = "model") -> Facts:
    """The facts of the ``slot`` input model that hold for a deployed form of it."""
    return {k: v for k, v in inputs.get(slot, {}).items() if k in KEPT_FACTS}
