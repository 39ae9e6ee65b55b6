"""What `recipe report` gathers from a run directory: every stage, training
curves equal to the trainer's history, data funnels equal to the data
stages' counts, eval metrics and samples; and the same from the manifest
alone as from the recipe."""

from __future__ import annotations

import json
import math

import pytest

from recipe_runner.recipe import load_recipe
from recipe_runner.report import ReportError, collect_recipe, collect_run
from recipe_runner.report.collect import StageView, before_after, eval_result, history_curves, stage_funnel
from recipe_runner.report.sections import eval_tables


def _curve(report, stage: str, metric: str) -> list[list[float]]:
    return next(c.points for c in report.curves if c.stage == stage and c.metric == metric)


def test_every_stage_is_reported_done_with_its_bindings(tiny_run):
    """Every stage of the run, its status, seconds, metrics and input bindings."""
    recipe = load_recipe(tiny_run.recipe)
    report = collect_recipe(recipe, tiny_run.workdir)
    assert [s.name for s in report.stages] == [s.name for s in recipe.stages]
    assert all(s.status == "done" and s.directory for s in report.stages), [(s.name, s.status) for s in report.stages]
    assert not any(s.changed for s in report.stages)  # the recipe is the one that ran
    by_name = {s.name: s for s in report.stages}
    assert by_name["pretrain"].inputs == {"model": "init.model", "dataset": "pack.dataset"}
    assert by_name["pretrain"].seconds > 0 and by_name["pretrain"].metrics["global_step"] == 6
    assert report.status == "done" and report.recipe.name == "report-tiny" and "length filter" in report.recipe.text


def test_curves_are_the_training_history(tiny_run):
    history = tiny_run.history()
    report = collect_recipe(load_recipe(tiny_run.recipe), tiny_run.workdir)
    for metric in ("loss", "learning_rate", "grad_norm"):
        assert _curve(report, "pretrain", metric) == [[h["step"], h[metric]] for h in history if metric in h]
    assert [p[0] for p in _curve(report, "pretrain", "loss")] == [1, 2, 3, 4, 5, 6]  # logging_steps 1
    evals = {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}
    assert _curve(report, "pretrain", "eval_loss") == [[s, v] for s, v in sorted(evals.items())]
    assert {c.metric for c in report.curves} >= {"loss", "eval_loss", "learning_rate", "grad_norm"}
    assert not {c.metric for c in report.curves} & {"epoch", "train_runtime", "eval_samples_per_second"}


def test_the_run_directory_alone_gives_the_same_report(tiny_run):
    """The recipe only finds the run directory (and marks stages it changed: none here)."""
    from_recipe = collect_recipe(load_recipe(tiny_run.recipe), tiny_run.workdir)
    from_dir = collect_run(tiny_run.run_dir)
    assert from_dir == from_recipe


def test_funnels_count_documents_per_filter(tiny_run):
    report = collect_run(tiny_run.run_dir)
    metrics = {s.name: s.metrics for s in report.stages}
    source, filtered = report.funnels
    assert source.stage == "source" and source.documents_in == metrics["source"]["documents.the-verdict"] == 83
    m = metrics["filter"]
    assert (filtered.stage, filtered.documents_in) == ("filter", m["documents_in"])
    (step,) = filtered.steps
    assert (step.label, step.removed, step.documents) == ("length", m["removed.length"], m["documents_out"])
    assert step.removed > 0 and sum(step.detail.values()) == step.removed  # reasons add up


def test_eval_report_metrics_and_samples(tiny_run):
    report = collect_run(tiny_run.run_dir)
    (ev,) = report.evals
    record = json.loads(next((tiny_run.run_dir / "stages").glob("eval-*/outputs/report/report.json")).read_text())
    assert ev.stage == "eval" and ev.metrics["perplexity"] == record["metrics"]["perplexity"] > 1
    assert [(s.stage, s.fields) for s in report.samples] == [
        ("eval", {k: str(v) for k, v in sample.items()}) for sample in record["samples"]
    ]
    assert report.samples and all(
        s.fields["prompt"] == "I had always thought <script>alert('x')</script> Jack" for s in report.samples
    )


def test_a_directory_without_a_manifest_is_an_error(tmp_path):
    with pytest.raises(ReportError, match="no manifest.json"):
        collect_run(tmp_path)


def test_history_keeps_the_last_value_of_a_step_and_drops_non_numbers():
    history = [
        {"step": 1, "loss": 2.0, "epoch": 0.1},
        {"step": 2, "loss": float("nan"), "grad_norm": 0.5},
        {"step": 2, "eval_loss": 1.5, "eval_runtime": 0.3},
        {"step": 2, "eval_loss": 1.4, "train_runtime": 9.0, "train_loss": 1.9},
    ]
    curves = {c.metric: c.points for c in history_curves("s", history)}
    assert curves == {"loss": [[1, 2.0]], "grad_norm": [[2, 0.5]], "eval_loss": [[2, 1.4]]}
    assert not any(math.isnan(v) for points in curves.values() for _, v in points)


def _view(metrics: dict) -> StageView:
    return StageView("q", "quantize", "done", False, 1.0, "new", "f" * 64, {}, metrics)


def test_before_after_rows_and_dedup_funnel_from_metrics():
    measured = {"source_size_bytes": 400, "size_bytes": 100, "perplexity_before": 10.0, "perplexity_after": 10.5}
    quant = before_after(
        _view({**measured, "method": "gguf", "sample_before": "a", "sample_after": "b", "prompt": "p"})
    )
    assert quant is not None and quant.rows == [("size_bytes", 400, 100), ("perplexity", 10.0, 10.5)]
    assert quant.facts == {"method": "gguf"}
    dedup = stage_funnel(_view({"documents_in": 10, "documents_out": 7, "exact_duplicates_removed": 3}))
    assert dedup is not None and [(s.documents, s.removed, s.detail) for s in dedup.steps] == [
        (7, 3, {"exact_duplicates_removed": 3})
    ]
    assert stage_funnel(_view({"rows": 5})) is None and before_after(_view({"rows": 5})) is None


def test_eval_report_with_a_judge_table(tmp_path):
    """An eval report as the eval stage writes it with a judge: report.json names judge.jsonl next to it."""
    report = {
        "metrics": {"judge/score": 3.5, "truthfulqa_mc2/acc": 0.4, "truthfulqa_mc2/acc_stderr": 0.05},
        "samples": [{"prompt": "Hi", "completion": "there"}],
        "judge": {"metrics": {"judge/score": 3.5}, "table": {"jsonl": "judge.jsonl", "csv": "judge.csv"}},
    }
    (tmp_path / "report.json").write_text(json.dumps(report))
    verdicts = [{"instruction": f"q{i}", "response": "<b>bold</b>", "score": i % 5} for i in range(60)]
    (tmp_path / "judge.jsonl").write_text("".join(json.dumps(v) + "\n" for v in verdicts))
    samples: list = []
    result = eval_result("eval", tmp_path, samples)
    assert result.metrics == {"judge/score": 3.5, "truthfulqa_mc2/acc": 0.4}
    assert result.stderr == {"truthfulqa_mc2/acc": 0.05} and result.judge_metrics == {"judge/score": 3.5}
    assert result.judge_rows == verdicts[:50] and result.judge_rows_total == 60
    assert [(s.stage, s.fields) for s in samples] == [("eval", {"prompt": "Hi", "completion": "there"})]
    html = eval_tables([result])
    assert "first 50 of 60 verdicts" in html and "&lt;b&gt;bold&lt;/b&gt;" in html and "<b>bold" not in html
    assert "± 0.0500" in html
