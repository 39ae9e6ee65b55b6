"""The quantize stage's ``gguf`` method: the model written as one GGUF file
with the recipe's lineage in its metadata, then read back through
transformers' GGUF loader, as a user of transformers would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recipe_runner import GGUF_FILE, Artifact, StageContext, StageError

from ..params import QuantizeParams
from .lineage import lineage_metadata
from .tensors import count_weights
from .writer import write_gguf


def quantize_gguf(ctx: StageContext[QuantizeParams], model_art: Artifact) -> tuple[Artifact, Any, int]:
    """(the ``gguf`` artifact, the file read back as a float32 model, its size in bytes)."""
    p = ctx.params
    model_dir = Path(model_art.path)
    out_dir = ctx.output_path("gguf")
    for old in out_dir.glob("*.gguf*"):  # a re-run after a crash starts the file again
        old.unlink()
    fname = f"{p.gguf_name}.{p.gguf_type}.gguf"
    meta, description = lineage_metadata(
        ctx.lineage, model_art, p.gguf_type, recipe=ctx.recipe_name or "", stage=ctx.name, seed=ctx.seed
    )
    with ctx.progress(f"write {fname}", total=count_weights(model_dir)) as prog:
        res = write_gguf(
            model_dir,
            out_dir / fname,
            p.gguf_type,
            metadata=meta,
            name=str(meta["recipe_runner.recipe"]) or model_dir.name,
            description=description,
            progress=prog.advance,
        )
    ctx.metrics.update(
        gguf_type=p.gguf_type,
        gguf_file=fname,
        gguf_tensor_types=res.tensor_types,
        tokenizer_model=res.tokenizer_model,
    )
    art = Artifact(
        GGUF_FILE,
        out_dir,
        meta={
            "file": fname,
            "gguf_type": p.gguf_type,
            "architecture": "llama",
            "tokenizer_model": res.tokenizer_model,
            "num_parameters": res.n_params,
        },
    )
    return art, read_back(out_dir, fname), (out_dir / fname).stat().st_size


def read_back(out_dir: Path, fname: str) -> Any:
    """The GGUF file loaded with transformers (float32); a failure is a StageError."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(out_dir), gguf_file=fname, dtype=torch.float32)
    except Exception as e:
        raise StageError(f"the GGUF {out_dir / fname} was written but transformers cannot load it: {e}") from e
