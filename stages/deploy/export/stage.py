"""``export``: the deliverable -- a Hugging Face model directory (sharded
safetensors, config, generation config, tokenizer) with a model card
(README.md, ``model_card.py``) that records where the model came from: the
recipe, every upstream stage's fingerprint and metrics (data statistics,
training losses), and the evaluation results.  A GGUF file from a
``quantize`` stage is copied alongside.  Optionally the directory is pushed to
the Hugging Face hub (``hub_push.py``)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recipe_runner import Artifact, Facts, Input, Stage, StageContext, StageError
from recipe_runner.artifacts import EVAL_REPORT, GGUF_FILE, MODEL

from ...common.models import count_parameters, load_tokenizer, match_umask, save_model_dir
from ..model_facts import kept_model_facts
from .model_card import model_card
from .params import ExportParams

#: files of the source model directory that travel with the export
_COPIED_FILES = ("loss_curve.png", "layer_map.json")


class ExportStage(Stage[ExportParams]):
    name = "export"
    version = "2"
    description = (
        "Export an HF model directory (sharded safetensors + tokenizer + generation config) with a "
        "model card recording the lineage and evaluation results; optional GGUF copy and hub push."
    )
    Params = ExportParams
    outputs = {"model": MODEL}
    inputs = {
        "model": Input(MODEL, description="the model to export"),
        "report": Input(EVAL_REPORT, optional=True, description="evaluation report for the model card"),
        "gguf": Input(GGUF_FILE, optional=True, description="GGUF file (from quantize) copied into the export"),
    }

    @classmethod
    def output_facts(cls, params: ExportParams, inputs: Mapping[str, Facts]) -> Mapping[str, Facts]:
        """The input model's context length and vocabulary hold for the export."""
        return {"model": kept_model_facts(inputs)}

    def run(self, ctx: StageContext[ExportParams]) -> dict[str, Artifact]:
        p = ctx.params
        src = Path(ctx.input("model").path)
        model, tokenizer = _load(src, p)
        out = ctx.output_path("model")
        shards = _write_model(out, model, tokenizer, p.max_shard_size, src)
        n_params = count_parameters(model)
        gguf_name = _copy_gguf(ctx.inputs.get("gguf"), out)
        report = _copy_report(ctx.inputs.get("report"), out)
        _write_lineage_and_card(ctx, out, model, n_params, report, gguf_name, src)
        match_umask(out)  # copies keep their source's modes: every file as the umask gives a new one
        ctx.metrics.update(
            {
                "num_parameters": n_params,
                "shards": len(shards),
                "size_bytes": sum(f.stat().st_size for f in out.iterdir() if f.is_file()),
            }
        )
        if gguf_name:
            ctx.metrics["gguf"] = gguf_name
        if p.push_to_hub is not None:
            from .hub_push import push_folder

            ctx.metrics["hub_url"] = push_folder(out, p.push_to_hub, ctx.log)
        ctx.log.info("exported %s parameters in %d shard(s) to %s", f"{n_params:,}", len(shards), out)
        meta = {
            "num_parameters": n_params,
            "num_layers": model.config.num_hidden_layers,
            "vocab_size": int(model.get_input_embeddings().weight.shape[0]),
            "shards": shards,
            "gguf": gguf_name,
        }
        return {"model": Artifact(MODEL, out, meta=meta)}


def _load(src: Path, p: ExportParams) -> tuple[Any, Any]:
    """(model in the export dtype, tokenizer); a failure is a StageError."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = "auto" if p.dtype == "auto" else getattr(torch, p.dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(src), dtype=dtype)
        tokenizer = load_tokenizer(src)
    except (OSError, ValueError) as e:
        raise StageError(f"export: cannot load the model / tokenizer at {src}: {e}") from None
    return model, tokenizer


def _write_model(out: Path, model: Any, tokenizer: Any, max_shard_size: str, src: Path) -> list[str]:
    """The model directory in shards of at most ``max_shard_size``, with the
    source's loss curve and layer map; the shard file names."""
    for old in out.glob("*.safetensors*"):
        old.unlink()  # a re-run must not leave shards of another size behind
    save_model_dir(model, tokenizer, out, max_shard_size=max_shard_size)
    for extra in _COPIED_FILES:
        if (src / extra).is_file():
            shutil.copy2(src / extra, out / extra)
    return sorted(f.name for f in out.glob("*.safetensors"))


def _copy_gguf(gguf_art: Artifact | None, out: Path) -> str | None:
    """The gguf input's file copied into the export; its name (None without the input)."""
    if gguf_art is None:
        return None
    gpath = Path(gguf_art.path)
    files = [gpath] if gpath.is_file() else sorted(gpath.glob("*.gguf"))
    if not files:
        raise StageError(f"export: the gguf input {gpath} holds no .gguf file")
    shutil.copy2(files[0], out / files[0].name)
    return files[0].name


def _copy_report(rep_art: Artifact | None, out: Path) -> dict[str, Any] | None:
    """The eval report (read, and copied as eval_report.json); None without the input."""
    if rep_art is None:
        return None
    rpath = Path(rep_art.path)
    rfile = rpath if rpath.is_file() else rpath / "report.json"
    try:
        report: dict[str, Any] = json.loads(rfile.read_text())
    except (OSError, ValueError) as e:
        raise StageError(f"export: cannot read the eval report {rfile}: {e}") from None
    shutil.copy2(rfile, out / "eval_report.json")
    return report


def _write_lineage_and_card(
    ctx: StageContext[ExportParams],
    out: Path,
    model: Any,
    n_params: int,
    report: dict[str, Any] | None,
    gguf_name: str | None,
    src: Path,
) -> None:
    """lineage.json (the run's lineage as it is) and, when asked, README.md."""
    p, lineage = ctx.params, ctx.lineage
    recipe = (lineage.recipe if lineage else "") or ctx.recipe_name or ""
    (out / "lineage.json").write_text(json.dumps(lineage.to_json() if lineage else {}, indent=1, default=str))
    if not p.model_card:
        return
    card = model_card(
        title=p.model_name or recipe or src.name,
        lineage=lineage,
        recipe=recipe,
        report=report,
        config=model.config.to_dict(),
        num_parameters=n_params,
        p=p,
        gguf=gguf_name,
    )
    (out / "README.md").write_text(card)
