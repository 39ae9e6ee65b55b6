"""Typed artifacts that stages consume and produce.

An artifact is a directory (or file) on disk plus its kind and a little
metadata.  Kinds are plain strings so third-party plugins can add their own;
the well-known ones are listed in ``KINDS`` with what their directory holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATASET = "dataset"
TOKENIZED_DATASET = "tokenized_dataset"
PACKED_DATASET = "packed_dataset"
TOKENIZER = "tokenizer"
MODEL = "model"
ADAPTER = "adapter"
PREFERENCE_DATASET = "preference_dataset"
REWARD_MODEL = "reward_model"
EVAL_REPORT = "eval_report"
QUANTIZED_MODEL = "quantized_model"
GGUF_FILE = "gguf_file"

# Well-known fact keys (Stage.output_facts): what a stage can tell, at plan
# time, about an output, so that downstream checks need not know its plugin.
SEQ_LENGTH = "seq_length"  # packed dataset: tokens per row
MAX_POSITIONS = "max_positions"  # model: max_position_embeddings
VOCAB_SIZE = "vocab_size"  # model or tokenizer: vocabulary size
DOCUMENT_SEPARATOR = "document_separator"  # tokenized dataset: documents carry a BOS or EOS token (bool)
VOCAB_SIZE_AT_MOST = "vocab_size_at_most"  # tokenizer trained in the run: its requested size (may end smaller)
MODEL_SHAPE = "model_shape"  # model: {num_hidden_layers, hidden_size, intermediate_size, heads, vocab_size...}

KINDS: dict[str, str] = {
    DATASET: "a datasets.DatasetDict saved to disk (splits 'train' and optionally 'validation'), text in a column",
    TOKENIZED_DATASET: "a DatasetDict with 'input_ids' and 'num_tokens' per document",
    PACKED_DATASET: "a DatasetDict of fixed-length training rows: 'input_ids' "
    "(and 'labels' / 'position_ids' where needed)",
    TOKENIZER: "a Hugging Face tokenizer directory (AutoTokenizer.from_pretrained)",
    MODEL: "a Hugging Face model directory with safetensors weights (AutoModelForCausalLM.from_pretrained)",
    ADAPTER: "a PEFT adapter directory (PeftModel.from_pretrained)",
    PREFERENCE_DATASET: "a DatasetDict with 'prompt', 'chosen' and 'rejected' columns",
    REWARD_MODEL: "a sequence-classification model directory that scores texts",
    EVAL_REPORT: "a directory with report.json (metrics, samples, tables)",
    QUANTIZED_MODEL: "a quantized model directory (format named in its metadata)",
    GGUF_FILE: "a directory holding one .gguf file",
}


@dataclass
class Artifact:
    """One output of a stage: where it is, what it is, and facts about it."""

    kind: str
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)
    producer: str | None = None  # stage name that made it
    fingerprint: str | None = None  # producer's fingerprint

    def to_json(self, relative_to: Path | None = None) -> dict[str, Any]:
        path = Path(self.path)
        if relative_to is not None:
            try:
                path = path.relative_to(relative_to)
            except ValueError:
                pass
        return {"kind": self.kind, "path": str(path), "meta": self.meta}

    @classmethod
    def from_json(cls, data: dict[str, Any], base: Path | None = None, **extra: Any) -> Artifact:
        path = Path(data["path"])
        if base is not None and not path.is_absolute():
            path = base / path
        return cls(kind=data["kind"], path=path, meta=dict(data.get("meta", {})), **extra)
