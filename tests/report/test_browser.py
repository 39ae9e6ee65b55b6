"""The report pages in a real headless browser (Debian's chromium through
selenium; skipped where it is not installed): they render without console
errors, every chart is drawn with all its points, hovering shows the values,
the legend hides a series, and a screenshot of the page is taken."""

from __future__ import annotations

from recipe_runner.recipe import load_recipe
from recipe_runner.report import collect_recipe, collect_run, render_comparison, render_report

CHARTS_STATE = """
return [...document.querySelectorAll('figure.chart')].map(f => ({
  metric: f.dataset.metric,
  drawn: f.dataset.drawn,
  points: Number(f.dataset.points),
  paths: [...f.querySelectorAll('path.series')].map(p => p.getAttribute('d')),
}));
"""


def _open(driver, html: str, path):
    path.write_text(html, encoding="utf-8")
    driver.get_log("browser")  # what earlier pages logged
    driver.set_window_size(1400, 1000)
    driver.get(path.as_uri())
    assert driver.execute_script("return document.body.dataset.chartsDrawn") is not None, "the script did not finish"
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def _check_charts_drawn(driver, charts: list[dict]) -> None:
    state = driver.execute_script(CHARTS_STATE)
    assert [s["metric"] for s in state] == [c["metric"] for c in charts]
    for s, chart in zip(state, charts, strict=True):
        points = [len(series["points"]) for series in chart["series"]]
        assert s["drawn"] == "1" and s["points"] == sum(points) > 0, s
        assert [d.count("L") + 1 for d in s["paths"]] == points  # one path per series, a vertex per point


def test_report_page_renders_and_its_charts_respond(chromium, tiny_run, tmp_path):
    report = collect_recipe(load_recipe(tiny_run.recipe), tiny_run.workdir)
    html = render_report(report)
    _open(chromium, html, tmp_path / "report.html")
    from recipe_runner.report.charts import training_charts

    _check_charts_drawn(chromium, training_charts([(report.name, report)]))

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    loss = chromium.find_element(By.CSS_SELECTOR, "figure.chart[data-metric='loss']")
    ActionChains(chromium).move_to_element(loss.find_element(By.CSS_SELECTOR, "rect.hover-area")).perform()
    tip = loss.find_element(By.CSS_SELECTOR, ".tip")
    assert tip.is_displayed() and tip.text.startswith("step ") and "pretrain: " in tip.text

    toggle = loss.find_element(By.CSS_SELECTOR, "button.series-toggle")
    toggle.click()
    assert toggle.get_attribute("aria-pressed") == "false"
    assert loss.get_attribute("data-points") == "0" and not loss.find_elements(By.CSS_SELECTOR, "path.series")
    toggle.click()
    assert loss.get_attribute("data-points") == "6"

    height = chromium.execute_script("return document.documentElement.scrollHeight")
    chromium.set_window_size(1400, height)
    shot = tmp_path / "report.png"
    assert chromium.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_comparison_page_renders(chromium, tiny_run, second_run, tmp_path):
    a, b = collect_run(tiny_run.run_dir), collect_run(second_run.run_dir)
    _open(chromium, render_comparison(a, b), tmp_path / "compare.html")
    from recipe_runner.report.charts import training_charts

    charts = training_charts([("A", a), ("B", b)])
    _check_charts_drawn(chromium, charts)
    dashed = chromium.execute_script(
        "return [...document.querySelectorAll('path.series')].filter(p => p.getAttribute('stroke-dasharray')).length"
    )
    assert dashed == sum(1 for c in charts for s in c["series"] if s["run"] == "B") > 0
