"""The report page of a real run, read back with an HTML parser: every stage
in the timeline and the lineage graph, chart data equal to the training
history, nothing loaded from the network, texts from the run escaped."""

from __future__ import annotations

import json
from html.parser import HTMLParser

from recipe_runner.recipe import load_recipe
from recipe_runner.report import collect_recipe, collect_run, render_comparison, render_report
from recipe_runner.report.html import script_json

SAMPLE_PROMPT = "I had always thought <script>alert('x')</script> Jack"


class Page(HTMLParser):
    """Tags with their attributes, the script elements' text, and the visible text."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self.text: list[str] = []
        self._in_script = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        (self.scripts if self._in_script else self.text).append(data)

    def attr_values(self, tag: str, attr: str) -> list[str]:
        return [a[attr] or "" for t, a in self.tags if t == tag and attr in a]

    def data(self) -> dict:
        (blob,) = [s for s in self.scripts if s.lstrip().startswith("{")]
        return json.loads(blob)


def _report_page(tiny_run) -> Page:
    return Page(render_report(collect_recipe(load_recipe(tiny_run.recipe), tiny_run.workdir)))


def test_every_stage_is_in_the_timeline_and_the_lineage_graph(tiny_run):
    page = _report_page(tiny_run)
    names = [s.name for s in load_recipe(tiny_run.recipe).stages]
    assert page.attr_values("g", "data-stage") == names
    edges = [t for t, a in page.tags if t == "path" and a.get("class") == "edge"]
    assert len(edges) == 8  # source→filter→tokenize→pack, tokenize→init, init/pack→pretrain, pretrain/pack→eval
    text = " ".join(page.text)
    for name in names:
        assert name in text
    ids = page.attr_values("section", "id")
    assert ids == [
        "stages",
        "lineage",
        "training",
        "data",
        "evaluation",
        "before-after",
        "samples",
        "metrics",
        "recipe",
    ]
    assert [f"#{i}" for i in ids] == page.attr_values("a", "href")


def test_chart_data_equals_the_training_history(tiny_run):
    page = _report_page(tiny_run)
    charts = {c["metric"]: c for c in page.data()["charts"]}
    assert list(charts)[:4] == ["loss", "eval_loss", "learning_rate", "grad_norm"]
    history = tiny_run.history()
    for metric in ("loss", "learning_rate", "grad_norm"):
        (series,) = charts[metric]["series"]
        assert series["stage"] == "pretrain"
        assert series["points"] == [[h["step"], h[metric]] for h in history if metric in h]
    figures = page.attr_values("figure", "data-chart")
    assert figures == [c["id"] for c in page.data()["charts"]]


def test_nothing_is_loaded_from_the_network(tiny_run):
    page = _report_page(tiny_run)
    urls = [v for tag, attrs in page.tags for k, v in attrs.items() if k in ("src", "href") and v]
    assert not [u for u in urls if u.startswith(("http://", "https://", "//"))], urls
    assert not page.attr_values("script", "src") and not page.attr_values("img", "src")
    assert page.attr_values("link", "href") == ["data:,"]  # the icon: an empty data URL, no favicon request
    assert any(t == "style" for t, _ in page.tags)  # the CSS is inline


def test_texts_from_the_run_are_escaped(tiny_run):
    html = render_report(collect_run(tiny_run.run_dir))
    page = Page(html)
    scripts = [a for t, a in page.tags if t == "script"]
    assert scripts == [{"type": "application/json", "id": "report-data"}, {}]  # the data and the page's own code
    assert SAMPLE_PROMPT in "".join(page.text)  # shown as text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "<script>alert" not in html
    assert page.data()["run"]["samples"][0]["fields"]["prompt"] == SAMPLE_PROMPT  # intact in the data


def test_script_json_cannot_close_its_element():
    text = script_json({"s": "</script><script>x()</script>", "a": "&", "nan": float("nan")})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"s": "</script><script>x()</script>", "a": "&", "nan": None}


def test_comparison_overlays_both_runs(tiny_run, second_run):
    a, b = collect_run(tiny_run.run_dir), collect_run(second_run.run_dir)
    page = Page(render_comparison(a, b))
    loss = next(c for c in page.data()["charts"] if c["metric"] == "loss")
    series = {s["label"]: s for s in loss["series"]}
    assert series["A · pretrain"]["points"] == [[h["step"], h["loss"]] for h in tiny_run.history() if "loss" in h]
    assert series["B · pretrain"]["points"] == [[h["step"], h["loss"]] for h in second_run.history() if "loss" in h]
    assert not series["A · pretrain"]["dashed"] and series["B · pretrain"]["dashed"]
    assert len(series["B · pretrain"]["points"]) == 4
    text = " ".join(page.text)
    assert "params.learning_rate" in text and "params.max_steps" in text  # the recipe differences
    ppl_a, ppl_b = (r.evals[0].metrics["perplexity"] for r in (a, b))
    assert f"{ppl_a:.4f}" in text and f"{ppl_b:.4f}" in text  # side by side
    assert page.attr_values("svg", "id") == ["lineage-0", "lineage-1"]


def test_a_failed_run_shows_its_error_and_what_did_not_run(run_recipe_cli, tiny_recipe, tmp_path):
    """pack asked for rows longer than the whole corpus: it fails, the stages after it stay pending."""
    longer = ("stages.pack.params.max_seq_length=100000", "stages.init.params.config.max_position_embeddings=100000")
    args = ("--workdir", str(tmp_path), "--set", longer[0], "--set", longer[1])
    proc = run_recipe_cli("run", str(tiny_recipe), *args, "--until", "pack")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = collect_run(tmp_path / "report-tiny")
    status = {s.name: s.status for s in report.stages}
    assert report.status == "failed" and status["pack"] == "failed" and status["filter"] == "done"
    assert status["init"] == status["eval"] == "pending"
    page = Page(render_report(report))
    text = " ".join(page.text)
    (error,) = [s.error for s in report.stages if s.error]
    assert "max_seq_length" in error and error in text
    assert page.attr_values("g", "data-stage") == list(status)
    assert page.data()["charts"] == [] and "no training stage logged a history" in text
