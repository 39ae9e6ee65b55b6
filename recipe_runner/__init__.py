"""recipe-runner: build language models from declarative YAML recipes.

The public API for stage plugins (this module imports no heavy library)::

    from recipe_runner import Stage, Params, Input, StageContext, StageError, Artifact, DATASET, MODEL
"""

from .artifacts import (
    ADAPTER,
    DATASET,
    DOCUMENT_SEPARATOR,
    EVAL_REPORT,
    GGUF_FILE,
    KINDS,
    MAX_POSITIONS,
    MODEL,
    PACKED_DATASET,
    PREFERENCE_DATASET,
    QUANTIZED_MODEL,
    REWARD_MODEL,
    SEQ_LENGTH,
    TOKENIZED_DATASET,
    TOKENIZER,
    VOCAB_SIZE,
    Artifact,
)
from .stage import (
    Facts,
    Input,
    Lineage,
    Params,
    PlanView,
    Stage,
    StageContext,
    StageError,
    StageRef,
    Upstream,
    UpstreamRecord,
    per_process,
    run_setting,
    split_params,
)

__version__ = "0.1.0"

__all__ = [
    "ADAPTER",
    "DATASET",
    "DOCUMENT_SEPARATOR",
    "EVAL_REPORT",
    "GGUF_FILE",
    "KINDS",
    "MAX_POSITIONS",
    "MODEL",
    "PACKED_DATASET",
    "PREFERENCE_DATASET",
    "QUANTIZED_MODEL",
    "REWARD_MODEL",
    "SEQ_LENGTH",
    "TOKENIZED_DATASET",
    "TOKENIZER",
    "VOCAB_SIZE",
    "Artifact",
    "Facts",
    "Input",
    "Lineage",
    "Params",
    "PlanView",
    "Stage",
    "StageContext",
    "StageError",
    "StageRef",
    "Upstream",
    "UpstreamRecord",
    "per_process",
    "run_setting",
    "split_params",
]
