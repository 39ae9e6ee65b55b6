"""Fixtures of the data-stage tests: real text (the shipped data and this
Python's standard library) saved the way the stages save datasets, filter
plugins registered the way a third party registers them, and the `recipe`
command line run in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import pytest

from recipe_runner import DATASET, Artifact

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="session")
def stdlib() -> Path:
    """This Python's standard library: real source files, text and code."""
    return STDLIB


@pytest.fixture(scope="session")
def shakespeare_paragraphs(data_dir) -> list[str]:
    text = (data_dir / "tinyshakespeare.txt").read_text()
    return [p for p in text.split("\n\n") if p.strip()]


@pytest.fixture(scope="session")
def stdlib_sources() -> list[str]:
    """The text of some real Python files (the json and email packages, plus a few modules)."""
    files = (
        sorted((STDLIB / "json").glob("*.py"))
        + sorted((STDLIB / "email").glob("*.py"))[:12]
        + [STDLIB / "heapq.py", STDLIB / "bisect.py", STDLIB / "textwrap.py"]
    )
    return [f.read_text(encoding="utf-8") for f in files]


@pytest.fixture(scope="session")
def real_texts(shakespeare_paragraphs, stdlib_sources, data_dir) -> list[str]:
    """Real documents of many shapes: short and long paragraphs, source code,
    a short story, and Shakespeare pieces with repeated paragraphs."""
    paras = shakespeare_paragraphs[:1500]
    chunks = ["\n\n".join(shakespeare_paragraphs[i : i + 6]) for i in range(1500, 2400, 6)]
    repeated = [
        "\n\n".join([p] * 4 + shakespeare_paragraphs[i + 1 : i + 3])
        for i, p in enumerate(shakespeare_paragraphs[2400:2460])
    ]
    verdict = (data_dir / "the-verdict.txt").read_text()
    return paras + chunks + repeated + stdlib_sources + [verdict]


@pytest.fixture(scope="session")
def kill_after_shards():
    """``kill_after_shards(cmd, shards_dir, n=2, env=None) -> (finished shards, killed)``:
    run ``cmd``, SIGKILL it once ``n`` of its train shards are finished in
    ``shards_dir`` (the shard store's layout), and count the finished ones."""

    def finished(shards: Path) -> int:
        return len([p for p in shards.glob("train-*") if (p / "meta.json").exists()]) if shards.exists() else 0

    def run(cmd: list[str], shards: Path, n: int = 2, env: dict[str, str] | None = None) -> tuple[int, bool]:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and finished(shards) < n:
            time.sleep(0.02)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        return finished(shards), killed

    return run


@pytest.fixture(scope="session")
def save_texts():
    """``save_texts(path, train, validation=None, **columns) -> Artifact``: a
    dataset artifact (DatasetDict on disk) holding these texts."""

    def save(path: Path, train: list[str], validation: list[str] | None = None, **columns) -> Artifact:
        from datasets import Dataset, DatasetDict

        splits = {"train": Dataset.from_dict({"text": list(train), **columns})}
        if validation is not None:
            splits["validation"] = Dataset.from_dict({"text": list(validation)})
        DatasetDict(splits).save_to_disk(str(path))
        return Artifact(DATASET, Path(path))

    return save


@pytest.fixture(scope="session")
def load_split():
    """``load_split(artifact, split="train") -> Dataset``: one split of a saved artifact."""

    def load(art: Artifact, split: str = "train"):
        from datasets import load_from_disk

        return load_from_disk(str(art.path))[split]

    return load


@pytest.fixture(scope="session")
def columns_of(load_split):
    """``columns_of(artifact, split="train") -> {column: values}``."""

    def columns(art: Artifact, split: str = "train") -> dict[str, list]:
        ds = load_split(art, split)
        return {c: list(ds[c]) for c in ds.column_names}

    return columns


@pytest.fixture()
def rr_testplugin():
    """The test-only plugin distribution rr-testplugin (tests/plugins/), whose
    ``has_word`` filter is registered like any third party's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rr-testplugin")
    except PackageNotFoundError:
        pytest.fail(
            "the test plugin is not installed: pip install -e tests/plugins/rr_testplugin "
            "(the README's test command does this)"
        )


@pytest.fixture()
def filter_plugin(tmp_path, monkeypatch):
    """Install (on sys.path) a package with three filters registered in the
    entry-point group ``recipe_runner.filters``: ``explode`` (raises on
    documents containing BOOM while the file named by $EXPLODE_FLAG exists),
    ``die`` (ends its process on documents containing DIE while that file
    exists) and ``slow`` (keeps everything after 0.2 s per batch)."""
    pkg = tmp_path / "plugins"
    pkg.mkdir()
    (pkg / "rr_test_filters.py").write_text(
        textwrap.dedent("""
        import os
        import time
        from typing import Literal

        from recipe_runner_stages.data.filter import DocumentFilter, FilterOptions


        def armed(texts, marker):
            flag = os.environ.get("EXPLODE_FLAG")
            return bool(flag and os.path.exists(flag) and any(marker in t for t in texts))


        class SlowOptions(FilterOptions):
            type: Literal["slow"] = "slow"


        class Slow(DocumentFilter[SlowOptions]):
            Options = SlowOptions

            def keep(self, texts):
                time.sleep(0.2)
                return [True] * len(texts)


        class DieOptions(FilterOptions):
            type: Literal["die"] = "die"


        class Die(DocumentFilter[DieOptions]):
            Options = DieOptions

            def keep(self, texts):
                if armed(texts, "DIE"):
                    os._exit(3)  # a worker killed outright (as by the OOM killer)
                return [True] * len(texts)


        class ExplodeOptions(FilterOptions):
            type: Literal["explode"] = "explode"


        class Explode(DocumentFilter[ExplodeOptions]):
            Options = ExplodeOptions

            def keep(self, texts):
                if armed(texts, "BOOM"):
                    raise RuntimeError("planted failure")
                return [True] * len(texts)
    """)
    )
    dist = pkg / "rr_test_filters-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rr-test-filters\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[recipe_runner.filters]\nexplode = rr_test_filters:Explode\ndie = rr_test_filters:Die\n"
        "slow = rr_test_filters:Slow\n"
    )
    monkeypatch.syspath_prepend(str(pkg))
    import importlib

    importlib.invalidate_caches()
    yield pkg


def _recipe_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recipe_runner.cli", *args],
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture()
def recipe_cli():
    """Run ``recipe ARGS...`` in a subprocess (``env``: variables to add): ``recipe_cli("validate", path)``."""
    return _recipe_cli


@pytest.fixture()
def stage_keys():
    """``stage_keys(recipe, workdir, env=None) -> {stage: key}`` from ``recipe status --json``."""

    def keys(recipe: Path, workdir: Path, env: dict[str, str] | None = None) -> dict[str, str | None]:
        proc = _recipe_cli("status", str(recipe), "--workdir", str(workdir), "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        return {s["name"]: s["fingerprint"] for s in json.loads(proc.stdout)["stages"]}

    return keys


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with 2 CPUs, started once for the module and shut
    down after it; yields its address (for ``RAY_ADDRESS`` in a `recipe run`
    subprocess; the stages run in this process connect to it as they are).
    Module-scoped and so last in a module: no worker pool is forked from a
    process connected to Ray."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
