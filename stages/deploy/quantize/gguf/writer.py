"""One GGUF file from a Hugging Face Llama-family model directory: the
general keys, the hyper-parameters, extra metadata, the tokenizer and the
tensors, written to a ``.partial`` file that replaces the target at the end."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipe_runner import StageError

from .hparams import GGUF_TYPES, LlamaHParams, add_hparams
from .tensors import TensorCounts, add_tensors
from .vocab import add_tokenizer

#: a metadata value the writer takes: str, int, float, bool or a list (written as strings)
MetadataValue = str | int | float | bool | list[str] | tuple[str, ...]


@dataclass
class GGUFResult:
    path: Path
    file_type: str
    tensor_types: dict[str, int] = field(default_factory=dict)  # ggml type -> number of tensors
    n_tensors: int = 0
    n_params: int = 0
    tokenizer_model: str = ""
    tokenizer_pre: str | None = None


def write_gguf(
    model_dir: str | Path,
    out_file: str | Path,
    gguf_type: str = "q8_0",
    metadata: Mapping[str, MetadataValue] | None = None,
    name: str | None = None,
    description: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> GGUFResult:
    """Convert ``model_dir`` to ``out_file``.  ``metadata``: extra keys (str ->
    str/int/float/bool, or a list written as strings) written as they are,
    e.g. ``recipe_runner.recipe``."""
    import gguf

    model_dir, out_file = Path(model_dir), Path(out_file)
    if gguf_type not in GGUF_TYPES:
        raise StageError(f"gguf_type {gguf_type!r} is not one of {sorted(GGUF_TYPES)}")
    hp = LlamaHParams.of(model_dir)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(out_file.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), hp.arch, use_temp_file=True)
    _add_general(writer, gguf_type, name or model_dir.name, description)
    add_hparams(writer, hp)
    add_metadata(writer, metadata or {})
    tok_model, tok_pre = add_tokenizer(writer, model_dir, hp.vocab_size)
    counts = TensorCounts()
    add_tensors(writer, model_dir, hp, gguf.GGMLQuantizationType[GGUF_TYPES[gguf_type][0]], counts, progress)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out_file)
    return GGUFResult(
        path=out_file,
        file_type=gguf_type,
        tensor_types=counts.tensor_types,
        n_tensors=counts.n_tensors,
        n_params=counts.n_params,
        tokenizer_model=tok_model,
        tokenizer_pre=tok_pre,
    )


def _add_general(writer: Any, gguf_type: str, name: str, description: str | None) -> None:
    """The ``general.*`` keys: type, name, description, quantizer, file type."""
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    if description:
        writer.add_description(description)
    writer.add_quantized_by("recipe-runner")
    writer.add_file_type(int(gguf.LlamaFileType[GGUF_TYPES[gguf_type][1]]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def add_metadata(writer: Any, metadata: Mapping[str, MetadataValue]) -> None:
    """Extra keys, typed by their value (an empty list is left out: a GGUF
    array carries its element type, which an empty one cannot say)."""
    for key, value in metadata.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_int64(key, value)
        elif isinstance(value, float):
            writer.add_float64(key, value)
        elif isinstance(value, (list, tuple)):
            if value:
                writer.add_array(key, [str(v) for v in value])
        else:
            writer.add_string(key, str(value))
