"""``eval``: evaluate a causal LM -- held-out perplexity, lm-eval-harness
tasks (the leaderboard set for users with the hub, the project's offline
TruthfulQA / OpenBookQA task files for everyone), and sample generations for
given prompts.  Everything lands in ``report.json`` (+ a table in
``report.md`` and the log) and in flat metrics such as ``perplexity`` or
``truthfulqa_mc2_local/acc``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field

from recipe_runner.artifacts import DATASET, EVAL_REPORT, MODEL, PACKED_DATASET, TOKENIZED_DATASET, Artifact
from recipe_runner.stage import Input, Params, Stage, StageContext, StageError

from ..common.devices import Device, Precision, cpu_threads_field, resolve_device, resolve_precision, with_cpu_threads
from ..common.generation import GenerationSettings, generate_texts
from ..common.models import load_causal_lm, load_tokenizer
from ..common.perplexity import perplexity
from .judge import JudgeParams


class TaskSpec(Params):
    name: str = Field(..., description="lm-eval task, group or preset name ('leaderboard')")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples; None = the task's default")
    limit: int | float | None = Field(None, gt=0, description="examples of this task (overrides the stage's limit)")


class GenerationParams(Params):
    prompts: list[str] = Field(..., min_length=1, description="prompts to complete; the completions go into the report")
    max_new_tokens: int = Field(64, ge=1, description="tokens to generate per prompt")
    do_sample: bool = Field(False, description="sample (with the settings below) instead of greedy decoding")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_k: int | None = Field(None, ge=1, description="sample from the k most likely tokens")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling: smallest set with this mass")
    repetition_penalty: float = Field(1.0, gt=0, description=">1 discourages repeating tokens (CTRL penalty)")


class EvalParams(Params):
    perplexity: bool = Field(True, description="compute perplexity when a `dataset` input is connected")
    split: str | None = Field(
        None, description="dataset split for perplexity; default 'validation', else 'test' ('train' only when named)")
    text_column: str = Field("text", description="text column of a (text) dataset input")
    block_size: int | None = Field(
        None, ge=2,
        description="row length when a text or tokenized dataset is cut into blocks for perplexity; default "
        "min(max_position_embeddings, 1024). Packed datasets keep their rows")
    max_eval_samples: int | None = Field(None, ge=1, description="cap on rows scored for perplexity")
    batch_size: int = Field(8, ge=1, description="batch size for perplexity and lm-eval")
    tasks: list[str | TaskSpec] = Field(
        default_factory=list,
        description="lm-eval tasks: names, {name, num_fewshot, limit} entries, or the preset 'leaderboard' "
        "(arc_challenge 25-shot, hellaswag 10, mmlu 5, truthfulqa_mc2 0, winogrande 5, gsm8k 5; needs the hub). "
        "Offline tasks shipped with the project: truthfulqa_mc2_local, truthfulqa_mc1_local, openbookqa_local")
    limit: int | float | None = Field(
        None, gt=0, description="examples per task (an int) or fraction (< 1); None = all. For quick checks")
    include_path: list[str] = Field(default_factory=list, description="extra directories of lm-eval task YAMLs")
    bootstrap_iters: int = Field(1000, ge=0, description="lm-eval bootstrap iterations for stderr of non-mean metrics")
    generation: GenerationParams | None = Field(None, description="sample generations for given prompts")
    precision: Precision = Field("auto", description="bf16 where the device has it, else fp32")
    device: Device = Field("auto", description="cpu, cuda or auto")
    cpu_threads: int | None = cpu_threads_field()
    judge: JudgeParams | None = Field(
        None, description="LLM judge: score each response 0-100 against the reference answer, or compare this "
        "model's responses with the `baseline` input's (asked in both orders). The judge model is judge.model, "
        "judge.endpoint, or the `judge_model` input")


def render_table(rows: list[tuple[str, str]], title: str) -> str:
    """A plain-text table (rich) of metric name -> value."""
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    buf = StringIO()
    Console(file=buf, width=100, force_terminal=False, color_system=None).print(table)
    return buf.getvalue()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.4g}"
    return str(value)


def _instruction_items_from(art: Artifact | None, split: str | None) -> list[dict[str, Any]]:
    """Alpaca records (instruction / input / output) from the dataset input, for the judge."""
    from datasets import load_from_disk

    if art is None or art.kind != DATASET:
        raise StageError("eval: the judge needs instructions: set judge.data (a .json / .jsonl file of Alpaca "
                         "records) or connect a dataset input with an 'instruction' column")
    from .perplexity import pick_split

    name, rows = pick_split(load_from_disk(str(art.path)), split, f"dataset {art.path}")
    if "instruction" not in rows.column_names:
        raise StageError(f"eval: split {name!r} of {art.path} has no 'instruction' column for the judge "
                         f"(columns: {', '.join(rows.column_names)}); set judge.data instead")
    return rows.to_list()


class EvalStage(Stage):
    name = "eval"
    version = "1"
    description = ("Perplexity on held-out data, lm-eval tasks (offline task files shipped), sample generations, "
                   "and an LLM judge (score against references, or compare with a baseline model).")
    Params = EvalParams
    inputs = {
        "model": Input(MODEL, description="the model to evaluate"),
        "dataset": Input(PACKED_DATASET, DATASET, TOKENIZED_DATASET, optional=True,
                         description="held-out data for perplexity (packed rows, or text / tokens cut into blocks)"),
        "baseline": Input(MODEL, optional=True, auto=False,
                          description="judge compare mode: the model to compare against (e.g. before fine-tuning)"),
        "judge_model": Input(MODEL, optional=True, auto=False,
                             description="a judge model from the recipe (instead of judge.model / judge.endpoint)"),
    }
    outputs = {"report": EVAL_REPORT}

    @classmethod
    def cross_check(cls, view) -> list[str]:
        j = view.params.judge
        if j is None:
            return []
        errors = []
        if j.model is None and j.endpoint is None and "judge_model" not in view.upstream:
            errors.append("judge: no judge model: set judge.model, judge.endpoint, or `inputs: {judge_model: STAGE}`")
        if j.mode == "compare" and j.baseline_model is None and "baseline" not in view.upstream:
            errors.append("judge: compare mode needs a second model: `inputs: {baseline: STAGE}` or "
                          "judge.baseline_model")
        return errors

    @with_cpu_threads
    def run(self, ctx: StageContext) -> dict[str, Artifact]:
        from .perplexity import blocks_from_ids, blocks_from_text, pick_split

        p: EvalParams = ctx.params  # type: ignore[assignment]
        model_dir = Path(ctx.input("model").path)
        device = resolve_device(p.device)
        precision = resolve_precision(p.precision, device)
        try:
            model = load_causal_lm(model_dir, precision=precision, device=device)
            tokenizer = load_tokenizer(model_dir)
        except (OSError, ValueError) as e:
            raise StageError(f"eval: cannot load the model / tokenizer at {model_dir}: {e}") from None
        model.eval()
        metrics: dict[str, Any] = {}
        report: dict[str, Any] = {"model": str(model_dir), "precision": precision, "device": device}

        # ---- perplexity
        data_art = ctx.inputs.get("dataset")
        if p.perplexity and data_art is not None:
            from datasets import load_from_disk

            try:
                ds = load_from_disk(str(data_art.path))
            except (FileNotFoundError, ValueError) as e:
                raise StageError(f"eval: cannot read the dataset at {data_art.path}: {e}") from None
            split, rows = pick_split(ds, p.split, f"dataset {data_art.path}")
            max_pos = getattr(model.config, "max_position_embeddings", None) or 1024
            block = p.block_size or min(max_pos, 1024)
            if data_art.kind == DATASET:
                rows = blocks_from_text(rows, tokenizer, p.text_column, block)
            elif data_art.kind == TOKENIZED_DATASET:
                rows = blocks_from_ids(rows, block, tokenizer.eos_token_id)
            elif "input_ids" not in rows.column_names:
                raise StageError(f"eval: packed dataset {data_art.path} has no 'input_ids' column")
            if p.max_eval_samples and len(rows) > p.max_eval_samples:
                rows = rows.select(range(p.max_eval_samples))
            if len(rows) == 0:
                raise StageError(f"eval: split {split!r} of {data_art.path} gives no rows of {block} tokens")
            with ctx.progress("perplexity", total=len(rows)) as bar:
                ppl = perplexity(model, rows, p.batch_size, bar.advance).as_dict()
            metrics.update({"perplexity": ppl["perplexity"], "eval_loss": ppl["loss"], "perplexity_tokens": ppl["tokens"]})
            report["perplexity"] = {**ppl, "split": split, "kind": data_art.kind,
                                    "definition": "exp(sum of token cross-entropy / predicted tokens)"}
            ctx.log.info("perplexity %.3f (loss %.4f over %d tokens, split %s)", ppl["perplexity"], ppl["loss"],
                         ppl["tokens"], split)

        # ---- lm-eval tasks
        if p.tasks:
            from .harness import expand, run_tasks

            specs = expand(p.tasks)
            flat, details = run_tasks(model, tokenizer, specs, limit=p.limit, batch_size=p.batch_size,
                                      include_paths=p.include_path, seed=ctx.seed, log=ctx.log,
                                      bootstrap_iters=p.bootstrap_iters)
            metrics.update(flat)
            report["tasks"] = details

        # ---- sample generations
        if p.generation is not None:
            g = p.generation
            settings = GenerationSettings(
                max_new_tokens=g.max_new_tokens, do_sample=g.do_sample, temperature=g.temperature, top_k=g.top_k,
                top_p=g.top_p, repetition_penalty=g.repetition_penalty)
            with ctx.progress("generate", total=len(g.prompts)) as bar:
                completions = generate_texts(model, tokenizer, g.prompts, settings, batch_size=1,
                                             add_special_tokens=True, seed=ctx.seed, progress=bar.advance)
            samples = [{"prompt": q, "completion": c} for q, c in zip(g.prompts, completions, strict=True)]
            for sample in samples:
                ctx.log.info("sample: %r -> %r", sample["prompt"], sample["completion"][:200])
            report["samples"] = samples
            report["generation"] = g.model_dump()

        # ---- LLM judge
        if p.judge is not None:
            from .judge import judge_models, load_instruction_items, save_table

            items = (load_instruction_items(p.judge.data) if p.judge.data is not None
                     else _instruction_items_from(ctx.inputs.get("dataset"), p.split))
            baseline = ctx.inputs.get("baseline")
            judge_art = ctx.inputs.get("judge_model")
            rows, jm = judge_models(p.judge, str(model_dir), items,
                                    baseline_path=str(baseline.path) if baseline else None, log=ctx.log,
                                    device=device, precision=precision,
                                    judge_model_path=str(judge_art.path) if judge_art else None)
            files = save_table(rows, ctx.output_path("report"), "judge")
            metrics.update(jm)
            report["judge"] = {"params": p.judge.model_dump(mode="json"), "metrics": jm, "table": files}

        rows = [(k, _fmt(v)) for k, v in metrics.items() if not k.endswith("_stderr")]
        table = render_table(rows, f"eval: {ctx.name}") if rows else ""
        if table:
            ctx.log.info("evaluation results\n%s", table)
        report["metrics"] = metrics
        out = ctx.output_path("report")
        (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
        md = ["# Evaluation report", "", f"model: `{model_dir}`", "", "```", table.rstrip(), "```"]
        for s in report.get("samples", []):
            md += ["", f"**{s['prompt']}** {s['completion']}"]
        (out / "report.md").write_text("\n".join(md) + "\n")
        ctx.metrics.update(metrics)
        return {"report": Artifact(EVAL_REPORT, out, meta={"metrics": list(metrics)})}
