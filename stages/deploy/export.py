"""``export``: the deliverable -- a Hugging Face model directory (sharded
safetensors, config, generation config, tokenizer) with a model card
(README.md) that records where the model came from: the recipe, every
upstream stage's fingerprint and metrics (data statistics, training losses),
and the evaluation results.  A GGUF file from a ``quantize`` stage is copied
alongside.  Optionally the directory is pushed to the Hugging Face hub."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from recipe_runner.artifacts import EVAL_REPORT, GGUF_FILE, MODEL, Artifact
from recipe_runner.stage import Input, Params, Stage, StageContext, StageError

from ..common.models import count_parameters, load_tokenizer, save_model_dir


class PushParams(Params):
    repo_id: str = Field(..., description="hub repository, e.g. 'my-org/tinysolar-308m'")
    private: bool = Field(True, description="create the repository as private")
    commit_message: str = Field("Upload model exported by recipe-runner", description="commit message")
    revision: str | None = Field(None, description="branch to push to (default: main)")


class ExportParams(Params):
    max_shard_size: str = Field("5GB", description="largest safetensors shard, e.g. '2GB' or '500MB'")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the exported weights; 'auto' keeps the model's")
    model_name: str | None = Field(None, description="title of the model card; default: the recipe name")
    license: str | None = Field(None, description="licence identifier for the card's metadata, e.g. apache-2.0")
    language: list[str] = Field(default_factory=list, description="languages for the card's metadata")
    tags: list[str] = Field(default_factory=list, description="extra tags for the card's metadata")
    model_card: bool = Field(True, description="write README.md with lineage and evaluation results")
    push_to_hub: PushParams | None = Field(
        None, description="push the exported directory to the hub ({repo_id, private}); needs network and a "
        "token (HF_TOKEN or `huggingface-cli login`)")


def _yaml_list(key: str, values: list[str]) -> list[str]:
    return [f"{key}:"] + [f"- {v}" for v in values] if values else []


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        s = json.dumps(v)
        return s if len(s) <= 80 else s[:77] + "..."
    return str(v)


def _lineage_stages(lineage: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Upstream stages from ctx.lineage, tolerant of its exact shape:
    {"stages": {name: {...}}} or {"stages": [{"name": ...}]} or {name: {...}}."""
    stages = lineage.get("stages", lineage.get("upstream"))
    if isinstance(stages, dict):
        return [(str(k), v if isinstance(v, dict) else {"value": v}) for k, v in stages.items()]
    if isinstance(stages, list):
        return [(str(s.get("name", i)), s) for i, s in enumerate(stages) if isinstance(s, dict)]
    return [(k, v) for k, v in lineage.items() if isinstance(v, dict)]


def model_card(*, title: str, lineage: dict[str, Any], recipe: str, report: dict[str, Any] | None,
               config: dict[str, Any], num_parameters: int, p: ExportParams, gguf: str | None) -> str:
    meta = ["---", "library_name: transformers", "pipeline_tag: text-generation"]
    if p.license:
        meta.append(f"license: {p.license}")
    meta += _yaml_list("language", p.language)
    meta += _yaml_list("tags", ["recipe-runner", *p.tags] + (["gguf"] if gguf else []))
    meta.append("---")
    lines = meta + ["", f"# {title}", "",
                    f"A {config.get('model_type', 'causal')} language model with {num_parameters:,} parameters "
                    f"({config.get('num_hidden_layers', '?')} layers, hidden size {config.get('hidden_size', '?')}, "
                    f"vocabulary {config.get('vocab_size', '?')}), built by recipe-runner from the recipe "
                    f"`{recipe or '?'}`.", ""]
    lines += ["## Usage", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "tok = AutoTokenizer.from_pretrained(PATH)", "model = AutoModelForCausalLM.from_pretrained(PATH)", "```"]
    if gguf:
        lines += ["", f"A GGUF file for llama.cpp is included: `{gguf}`."]
    if report and report.get("metrics"):
        lines += ["", "## Evaluation", "", "| metric | value |", "| --- | --- |"]
        for k, v in report["metrics"].items():
            if not k.endswith("_stderr"):
                lines.append(f"| {k} | {_fmt(v)} |")
        for task, d in (report.get("tasks") or {}).items():
            lines.append(f"\n`{task}`: {d.get('num_fewshot')}-shot, limit {d.get('limit')}")
        samples = report.get("samples") or []
        if samples:
            lines += ["", "Sample generations (prompt, then the model's continuation):", ""]
            for s in samples:
                lines += ["```text", (s["prompt"] + s["completion"]).replace("```", "'''"), "```"]
    stages = _lineage_stages(lineage)
    if stages:
        lines += ["", "## Lineage", "", "Stages of the recipe that produced this model (upstream first), with "
                  "their content fingerprints and metrics:", "", "| stage | type | fingerprint | metrics |",
                  "| --- | --- | --- | --- |"]
        for name, info in stages:
            metrics = info.get("metrics") or {}
            scalars = [(k, v) for k, v in metrics.items() if not isinstance(v, (list, dict))]
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in scalars[:8]) + (", ..." if len(scalars) > 8 else "")
            fp = str(info.get("fingerprint", ""))[:16]
            lines.append(f"| {name} | {info.get('type', info.get('stage', ''))} | `{fp}` | {shown} |")
    lines += ["", "## Training procedure", "",
              "Built with recipe-runner stages on the Hugging Face stack (datasets, transformers' Trainer). "
              "The full lineage (every upstream stage's metrics, package versions) is in `lineage.json`"
              + (", the evaluation report in `eval_report.json`" if report else "") + "."]
    return "\n".join(lines) + "\n"


def push_folder(folder: Path, push: PushParams, log) -> str:
    from recipe_runner_stages.model.init import hub_offline, hub_reachable

    if hub_offline():
        raise StageError(f"export: push_to_hub to {push.repo_id!r} needs the Hugging Face hub, which is offline "
                         "(HF_HUB_OFFLINE=1); unset it or drop push_to_hub (the export directory is kept)")
    if not hub_reachable():
        raise StageError(f"export: push_to_hub to {push.repo_id!r}: the Hugging Face hub cannot be reached from "
                         "this machine (offline); the export directory is kept")
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(push.repo_id, private=push.private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(folder), repo_id=push.repo_id, repo_type="model",
                                 commit_message=push.commit_message, revision=push.revision)
    except Exception as e:  # network, auth, permission errors come in many types
        raise StageError(f"export: push to {push.repo_id!r} failed ({type(e).__name__}: {str(e)[:300]}); the "
                         "export directory is kept; log in with `huggingface-cli login` or set HF_TOKEN") from None
    url = str(getattr(info, "commit_url", "") or f"https://huggingface.co/{push.repo_id}")
    log.info("pushed to %s", url)
    return url


class ExportStage(Stage):
    name = "export"
    version = "1"
    description = ("Export an HF model directory (sharded safetensors + tokenizer + generation config) with a "
                   "model card recording the lineage and evaluation results; optional GGUF copy and hub push.")
    Params = ExportParams
    inputs = {
        "model": Input(MODEL, description="the model to export"),
        "report": Input(EVAL_REPORT, optional=True, description="evaluation report for the model card"),
        "gguf": Input(GGUF_FILE, optional=True, description="GGUF file (from quantize) copied into the export"),
    }
    outputs = {"model": MODEL}

    def run(self, ctx: StageContext) -> dict[str, Artifact]:
        import torch
        from transformers import AutoModelForCausalLM

        p: ExportParams = ctx.params  # type: ignore[assignment]
        src = Path(ctx.input("model").path)
        kwargs: dict[str, Any] = {"dtype": "auto" if p.dtype == "auto" else getattr(torch, p.dtype)}
        try:
            model = AutoModelForCausalLM.from_pretrained(str(src), **kwargs)
            tokenizer = load_tokenizer(src)
        except (OSError, ValueError) as e:
            raise StageError(f"export: cannot load the model / tokenizer at {src}: {e}") from None
        out = ctx.output_path("model")
        for old in out.glob("*.safetensors*"):
            old.unlink()  # a re-run must not leave shards of another size behind
        save_model_dir(model, tokenizer, out, max_shard_size=p.max_shard_size)
        n_params = count_parameters(model)
        shards = sorted(f.name for f in out.glob("*.safetensors"))
        for extra in ("loss_curve.png", "layer_map.json"):
            if (src / extra).is_file():
                shutil.copy2(src / extra, out / extra)

        gguf_name = None
        gguf_art = ctx.inputs.get("gguf")
        if gguf_art is not None:
            gpath = Path(gguf_art.path)
            files = [gpath] if gpath.is_file() else sorted(gpath.glob("*.gguf"))
            if not files:
                raise StageError(f"export: the gguf input {gpath} holds no .gguf file")
            shutil.copy2(files[0], out / files[0].name)
            gguf_name = files[0].name

        report = None
        rep_art = ctx.inputs.get("report")
        if rep_art is not None:
            rpath = Path(rep_art.path)
            rfile = rpath if rpath.is_file() else rpath / "report.json"
            try:
                report = json.loads(rfile.read_text())
            except (OSError, ValueError) as e:
                raise StageError(f"export: cannot read the eval report {rfile}: {e}") from None
            shutil.copy2(rfile, out / "eval_report.json")

        lineage = ctx.lineage.to_json() if ctx.lineage else {}
        recipe = str(lineage.get("recipe") or lineage.get("recipe_name") or ctx.recipe_name or "")
        (out / "lineage.json").write_text(json.dumps(lineage, indent=1, default=str))
        if p.model_card:
            card = model_card(title=p.model_name or recipe or src.name, lineage=lineage, recipe=recipe,
                              report=report, config=model.config.to_dict(), num_parameters=n_params, p=p,
                              gguf=gguf_name)
            (out / "README.md").write_text(card)

        ctx.metrics.update({"num_parameters": n_params, "shards": len(shards),
                            "size_bytes": sum(f.stat().st_size for f in out.iterdir() if f.is_file())})
        if gguf_name:
            ctx.metrics["gguf"] = gguf_name
        if p.push_to_hub is not None:
            ctx.metrics["hub_url"] = push_folder(out, p.push_to_hub, ctx.log)
        ctx.log.info("exported %s parameters in %d shard(s) to %s", f"{n_params:,}", len(shards), out)
        return {"model": Artifact(MODEL, out, meta={"num_parameters": n_params,
                                                    "num_layers": model.config.num_hidden_layers,
                                                    "vocab_size": int(model.get_input_embeddings().weight.shape[0]),
                                                    "shards": shards, "gguf": gguf_name})}
