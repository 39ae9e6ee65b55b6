"""``eval``: evaluate a causal LM -- held-out perplexity, lm-eval-harness
tasks (the leaderboard set for users with the hub, the project's offline
TruthfulQA / OpenBookQA task files for everyone), sample generations for
given prompts, and an LLM judge.  Everything lands in ``report.json`` (+ a
table in ``report.md`` and the log) and in flat metrics such as
``perplexity`` or ``truthfulqa_mc2_local/acc``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recipe_runner import Artifact, Input, PlanView, Stage, StageContext, StageError, split_params
from recipe_runner.artifacts import DATASET, EVAL_REPORT, MODEL, PACKED_DATASET, TOKENIZED_DATASET

from ..common.devices import resolve_device, resolve_precision, with_cpu_threads
from ..common.models import load_causal_lm, load_tokenizer, local_path
from .harness import run_tasks
from .heldout_perplexity import heldout_perplexity
from .judge.instructions import dataset_instruction_items, load_instruction_items, save_table
from .judge.judging import judge_models
from .judge.params import JudgeParams
from .params import EvalParams
from .report import metrics_table, write_report
from .samples import sample_generations
from .task_dirs import task_dir_code, task_dir_inputs

Sections = dict[str, Any]

#: what perplexity is measured on: packed rows as they are, text or token ids cut into blocks
HELD_OUT_DATA = Input(
    PACKED_DATASET,
    DATASET,
    TOKENIZED_DATASET,
    optional=True,
    description="held-out data for perplexity (packed rows, or text / tokens cut into blocks)",
)


def _model_named_in_recipe(description: str) -> Input:
    """An optional model input that binds only when the recipe names its stage."""
    return Input(MODEL, optional=True, auto=False, description=description)


class EvalStage(Stage[EvalParams]):
    name = "eval"
    version = "2"
    description = (
        "Perplexity on held-out data, lm-eval tasks (offline task files shipped), sample generations, "
        "and an LLM judge (score against references, or compare with a baseline model)."
    )
    Params = EvalParams
    inputs = {
        "model": Input(MODEL, description="the model to evaluate"),
        "dataset": HELD_OUT_DATA,
        "baseline": _model_named_in_recipe(
            "judge compare mode: the model to compare against (e.g. before fine-tuning)"
        ),
        "judge_model": _model_named_in_recipe(
            "a judge model from the recipe (instead of judge.model / judge.endpoint)"
        ),
    }
    outputs = {"report": EVAL_REPORT}

    @classmethod
    def local_inputs(cls, params: EvalParams) -> Mapping[str, Path]:
        """The files of the recipe's task directories, and the judge's local
        instruction file, judge model and baseline model (hub ids are not local)."""
        out = task_dir_inputs(params.include_path)
        if params.judge is not None:
            out.update(_judge_local_inputs(params.judge))
        return out

    @classmethod
    def runs_code(cls, params: EvalParams) -> Mapping[str, str]:
        """Task directories of the recipe's that hold Python (``!function``)."""
        return task_dir_code(params.include_path)

    @classmethod
    def cross_check(cls, view: PlanView[EvalParams]) -> list[str]:
        j = view.params.judge
        if j is None:
            return []
        errors = []
        if j.model is None and j.endpoint is None and "judge_model" not in view.upstream:
            errors.append("judge: no judge model: set judge.model, judge.endpoint, or `inputs: {judge_model: STAGE}`")
        if j.mode == "compare" and j.baseline_model is None and "baseline" not in view.upstream:
            errors.append(
                "judge: compare mode needs a second model: `inputs: {baseline: STAGE}` or judge.baseline_model"
            )
        return errors

    @with_cpu_threads
    def run(self, ctx: StageContext[EvalParams]) -> dict[str, Artifact]:
        p = ctx.params
        model_dir = Path(ctx.input("model").path)
        device = resolve_device(p.device)
        precision = resolve_precision(p.precision, device)
        model, tokenizer = _load_model(model_dir, precision, device)
        metrics: dict[str, Any] = {}
        report: Sections = {"model": str(model_dir), "precision": precision, "device": device}
        data_art = ctx.inputs.get("dataset")
        if p.perplexity and data_art is not None:
            ppl_metrics, report["perplexity"] = heldout_perplexity(ctx, model, tokenizer, data_art)
            metrics.update(ppl_metrics)
        if p.tasks:
            task_metrics, report["tasks"] = run_tasks(model, tokenizer, p, seed=ctx.seed, log=ctx.log)
            metrics.update(task_metrics)
        if p.generation is not None:
            report.update(sample_generations(ctx, model, tokenizer, p.generation))
        if p.judge is not None:
            metrics.update(_run_judge_step(ctx, p.judge, model_dir, device, precision, report))
        return {"report": _write(ctx, model_dir, metrics, report)}


def _judge_local_inputs(judge: JudgeParams) -> dict[str, Path]:
    named = {"judge.data": judge.data, "judge.model": judge.model, "judge.baseline_model": judge.baseline_model}
    return {field: path for field, ref in named.items() if (path := local_path(ref)) is not None}


def _load_model(model_dir: Path, precision: str, device: str) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer); a failure is a StageError naming the directory."""
    try:
        model = load_causal_lm(model_dir, precision=precision, device=device)
        tokenizer = load_tokenizer(model_dir)
    except (OSError, ValueError) as e:
        raise StageError(f"eval: cannot load the model / tokenizer at {model_dir}: {e}") from None
    model.eval()
    return model, tokenizer


def _run_judge_step(
    ctx: StageContext[EvalParams],
    judge: JudgeParams,
    model_dir: Path,
    device: str,
    precision: str,
    report: Sections,
) -> dict[str, Any]:
    """The LLM judge: its metrics returned, its section into ``report['judge']``,
    its verdict table saved next to the report."""
    items = (
        load_instruction_items(judge.data)
        if judge.data is not None
        else dataset_instruction_items(ctx.inputs.get("dataset"), ctx.params.split)
    )
    baseline = ctx.inputs.get("baseline")
    judge_art = ctx.inputs.get("judge_model")
    rows, jm = judge_models(
        judge,
        str(model_dir),
        items,
        baseline_path=str(baseline.path) if baseline else None,
        log=ctx.log,
        device=device,
        precision=precision,
        judge_model_path=str(judge_art.path) if judge_art else None,
    )
    files = save_table(rows, ctx.output_path("report"), "judge")
    # without the run settings (endpoint timeout, retries): the report must be the same bytes whatever they are
    recorded = split_params(judge)[0]
    report["judge"] = {"params": recorded, "metrics": jm, "table": files}
    return jm


def _write(ctx: StageContext[EvalParams], model_dir: Path, metrics: dict[str, Any], report: Sections) -> Artifact:
    """Log the metrics table, write report.json / report.md, hand the metrics
    to the run; the ``report`` artifact."""
    table = metrics_table(metrics, f"eval: {ctx.name}")
    if table:
        ctx.log.debug("evaluation results\n%s", table)  # on the console with -v; in the report and log
    report["metrics"] = metrics
    out = ctx.output_path("report")
    write_report(out, report, table, model_dir)
    ctx.metrics.update(metrics)
    return Artifact(EVAL_REPORT, out, meta={"metrics": list(metrics)})
