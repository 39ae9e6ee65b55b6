"""Fixtures of the sft tests."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def fast() -> dict[str, Any]:
    """sft parameters for a few quick steps on the tiny model (short rows, one short sample)."""
    return {
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "max_length": 128,
        "logging_steps": 1,
        "save_steps": 100,
        "num_samples": 1,
        "sample_max_new_tokens": 8,
        "max_eval_samples": 8,
    }
