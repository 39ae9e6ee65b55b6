"""The exported model's card (README.md): Hugging Face metadata, what the
model is, how to load it, the evaluation results, and the lineage -- every
upstream stage with its fingerprint and metrics."""

from __future__ import annotations

import json
from typing import Any

from recipe_runner import Lineage, UpstreamRecord

from .params import ExportParams

#: scalar metrics shown per upstream stage in the lineage table
MAX_SHOWN_METRICS = 8


def model_card(
    *,
    title: str,
    lineage: Lineage | None,
    recipe: str,
    report: dict[str, Any] | None,
    config: dict[str, Any],
    num_parameters: int,
    p: ExportParams,
    gguf: str | None,
) -> str:
    lines = _front_matter(p, gguf)
    lines += ["", f"# {title}", "", _summary(config, num_parameters, recipe), ""]
    lines += ["## Usage", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer"]
    lines += ["tok = AutoTokenizer.from_pretrained(PATH)", "model = AutoModelForCausalLM.from_pretrained(PATH)", "```"]
    if gguf:
        lines += ["", f"A GGUF file for llama.cpp is included: `{gguf}`."]
    if report and report.get("metrics"):
        lines += _evaluation(report)
    if lineage and lineage.upstream:
        lines += _lineage_table(lineage.upstream)
    lines += [
        "",
        "## Training procedure",
        "",
        "Built with recipe-runner stages on the Hugging Face stack (datasets, transformers' Trainer). "
        "The full lineage (every upstream stage's metrics, package versions) is in `lineage.json`"
        + (", the evaluation report in `eval_report.json`" if report else "")
        + ".",
    ]
    return "\n".join(lines) + "\n"


def format_card_value(v: Any) -> str:
    """A value as the card shows it: floats to 4 significant digits, lists
    and dicts as JSON cut at 80 characters."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        s = json.dumps(v)
        return s if len(s) <= 80 else s[:77] + "..."
    return str(v)


def _yaml_list(key: str, values: list[str]) -> list[str]:
    return [f"{key}:"] + [f"- {v}" for v in values] if values else []


def _front_matter(p: ExportParams, gguf: str | None) -> list[str]:
    meta = ["---", "library_name: transformers", "pipeline_tag: text-generation"]
    if p.license:
        meta.append(f"license: {p.license}")
    meta += _yaml_list("language", p.language)
    meta += _yaml_list("tags", ["recipe-runner", *p.tags] + (["gguf"] if gguf else []))
    meta.append("---")
    return meta


def _summary(config: dict[str, Any], num_parameters: int, recipe: str) -> str:
    return (
        f"A {config.get('model_type', 'causal')} language model with {num_parameters:,} parameters "
        f"({config.get('num_hidden_layers', '?')} layers, hidden size {config.get('hidden_size', '?')}, "
        f"vocabulary {config.get('vocab_size', '?')}), built by recipe-runner from the recipe "
        f"`{recipe or '?'}`."
    )


def _evaluation(report: dict[str, Any]) -> list[str]:
    """The metrics table (stderr left out), the tasks' shots and limits, and
    the sample generations."""
    lines = ["", "## Evaluation", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {format_card_value(v)} |" for k, v in report["metrics"].items() if not k.endswith("_stderr")]
    for task, d in (report.get("tasks") or {}).items():
        lines.append(f"\n`{task}`: {d.get('num_fewshot')}-shot, limit {d.get('limit')}")
    return lines + _samples(report.get("samples") or [], report.get("generation") or {})


def _samples(samples: list[dict[str, Any]], generation: dict[str, Any]) -> list[str]:
    """The sample generations, each the prompt and the model's continuation,
    after a line saying how they were decoded."""
    if not samples:
        return []
    how = decoding_summary(generation)
    lines = ["", f"Sample generations{f' ({how})' if how else ''}: the prompt, then the model's continuation.", ""]
    for s in samples:
        lines += ["```text", (s["prompt"] + s["completion"]).replace("```", "'''"), "```"]
    return lines


def decoding_summary(generation: dict[str, Any]) -> str:
    """How the eval stage decoded its samples, in words ('' when the report
    does not say): greedy, or sampled with its settings, seed and count."""
    if not generation:
        return ""
    if not generation.get("do_sample"):
        return "greedy decoding"
    names = {
        "temperature": "temperature",
        "top_p": "top-p",
        "top_k": "top-k",
        "repetition_penalty": "repetition penalty",
    }
    settings = [f"{label} {generation[key]}" for key, label in names.items() if generation.get(key) is not None]
    settings += [f"seed {generation['seed']}"] if "seed" in generation else []
    n = generation.get("num_samples")
    return "sampled: " + ", ".join(settings) + (f"; {n} per prompt" if n else "")


def _lineage_table(upstream: tuple[UpstreamRecord, ...]) -> list[str]:
    lines = [
        "",
        "## Lineage",
        "",
        "Stages of the recipe that produced this model (upstream first), with their content fingerprints and metrics:",
        "",
        "| stage | type | fingerprint | metrics |",
        "| --- | --- | --- | --- |",
    ]
    for u in upstream:
        scalars = [(k, v) for k, v in u.metrics.items() if not isinstance(v, (list, dict))]
        shown = ", ".join(f"{k}={format_card_value(v)}" for k, v in scalars[:MAX_SHOWN_METRICS])
        if len(scalars) > MAX_SHOWN_METRICS:
            shown += ", ..."
        lines.append(f"| {u.name} | {u.type} | `{u.fingerprint[:16]}` | {shown} |")
    return lines
