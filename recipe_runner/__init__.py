"""recipe-runner: build language models from declarative YAML recipes.

The public API for stage plugins (this module imports no heavy library)::

    from recipe_runner import Stage, Params, Input, StageContext, StageError, Artifact, DATASET, MODEL
"""
from .artifacts import (
    ADAPTER,
    DATASET,
    EVAL_REPORT,
    GGUF_FILE,
    KINDS,
    MODEL,
    PACKED_DATASET,
    PREFERENCE_DATASET,
    QUANTIZED_MODEL,
    REWARD_MODEL,
    TOKENIZED_DATASET,
    TOKENIZER,
    Artifact,
)
from .stage import Input, Params, PlanView, Stage, StageContext, StageError

__version__ = "0.1.0"

__all__ = [
    "Artifact", "Input", "Params", "PlanView", "Stage", "StageContext", "StageError", "KINDS",
    "DATASET", "TOKENIZED_DATASET", "PACKED_DATASET", "TOKENIZER", "MODEL", "ADAPTER", "PREFERENCE_DATASET",
    "REWARD_MODEL", "EVAL_REPORT", "QUANTIZED_MODEL", "GGUF_FILE",
]
