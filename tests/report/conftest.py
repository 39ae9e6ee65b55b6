"""Fixtures of the `recipe report` tests: real runs of the tiny recipe next to
this file (The Verdict, a length filter, a BPE tokenizer trained in the
recipe, a 2-layer Llama pretrained for 6 steps with the loss logged every
step, an eval stage whose sample prompt holds a <script> tag), made once per
test session through the `recipe` command, and a headless Chromium when one
is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

TINY_RECIPE = Path(__file__).resolve().parent / "tiny_recipe.yaml"
#: the second run of the comparison: the same recipe, trained differently
SECOND_RUN_SETTINGS = ("stages.pretrain.params.learning_rate=0.01", "stages.pretrain.params.max_steps=4")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass(frozen=True)
class TinyRun:
    recipe: Path
    workdir: Path
    overrides: tuple[str, ...] = ()

    @property
    def run_dir(self) -> Path:
        return self.workdir / "report-tiny"

    def history(self) -> list[dict]:
        """The pretrain stage's trainer_history.json."""
        import json

        (path,) = self.run_dir.glob("stages/pretrain-*/outputs/model/trainer_history.json")
        return json.loads(path.read_text())


def recipe_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recipe_runner.cli", *args], env=ENV, capture_output=True, text=True, timeout=timeout
    )


def _run_tiny(workdir: Path, *overrides: str) -> TinyRun:
    sets = [a for o in overrides for a in ("--set", o)]
    proc = recipe_cli("run", str(TINY_RECIPE), "--workdir", str(workdir), *sets)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return TinyRun(TINY_RECIPE, workdir, tuple(overrides))


@pytest.fixture(scope="session")
def tiny_recipe() -> Path:
    """The tiny recipe's file (not run)."""
    return TINY_RECIPE


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """The tiny recipe, run to the end (about 25 s on 2 cores)."""
    return _run_tiny(tmp_path_factory.mktemp("report-runs"))


@pytest.fixture(scope="session")
def second_run(tmp_path_factory) -> TinyRun:
    """The tiny recipe again in another work directory, with another learning rate and 4 steps."""
    return _run_tiny(tmp_path_factory.mktemp("report-runs-b"), *SECOND_RUN_SETTINGS)


@pytest.fixture()
def run_recipe_cli():
    """`recipe ARGS...` in a subprocess (offline)."""
    return recipe_cli


@pytest.fixture(scope="session")
def chromium():
    """A headless Chromium (selenium, Debian's chromium and chromium-driver)
    that keeps the browser's console log; skipped without one.  Session-wide:
    each test opens its own page."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if browser is None or driver_path is None:
        pytest.skip("no Chromium here: apt-get install chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    yield driver
    driver.quit()
