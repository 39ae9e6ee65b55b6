"""Fixtures of the data-stage tests: real text (the shipped data and this
Python's standard library) saved the way the stages save datasets."""
from __future__ import annotations

import sysconfig
import textwrap
from pathlib import Path

import pytest


STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="session")
def shakespeare_paragraphs(data_dir) -> list[str]:
    text = (data_dir / "tinyshakespeare.txt").read_text()
    return [p for p in text.split("\n\n") if p.strip()]


@pytest.fixture(scope="session")
def stdlib_sources() -> list[str]:
    """The text of some real Python files (the json and email packages, plus a few modules)."""
    files = sorted((STDLIB / "json").glob("*.py")) + sorted((STDLIB / "email").glob("*.py"))[:12] \
        + [STDLIB / "heapq.py", STDLIB / "bisect.py", STDLIB / "textwrap.py"]
    return [f.read_text(encoding="utf-8") for f in files]


@pytest.fixture(scope="session")
def real_texts(shakespeare_paragraphs, stdlib_sources, data_dir) -> list[str]:
    """Real documents of many shapes: short and long paragraphs, source code,
    a short story, and Shakespeare pieces with repeated paragraphs."""
    paras = shakespeare_paragraphs[:1500]
    chunks = ["\n\n".join(shakespeare_paragraphs[i: i + 6]) for i in range(1500, 2400, 6)]
    repeated = ["\n\n".join([p] * 4 + shakespeare_paragraphs[i + 1: i + 3])
                for i, p in enumerate(shakespeare_paragraphs[2400:2460])]
    verdict = (data_dir / "the-verdict.txt").read_text()
    return paras + chunks + repeated + stdlib_sources + [verdict]


@pytest.fixture()
def filter_plugin(tmp_path, monkeypatch):
    """Install (on sys.path) a package with four filters registered in the
    entry-point group ``recipe_runner.filters``: ``has_word`` (a class with an
    Options model), ``explode`` (a function that raises on documents
    containing BOOM while the file named by $EXPLODE_FLAG exists) and ``die``
    (ends its process on documents containing DIE while that file exists) and
    ``slow`` (keeps everything after 0.2 s per batch)."""
    pkg = tmp_path / "plugins"
    pkg.mkdir()
    (pkg / "rr_test_filters.py").write_text(textwrap.dedent('''
        import os
        from pydantic import BaseModel, ConfigDict

        class HasWord:
            class Options(BaseModel):
                model_config = ConfigDict(extra="forbid")
                word: str

            def __init__(self, word):
                self.word = word

            def __call__(self, texts):
                return [self.word in t for t in texts]

        def slow(texts):
            import time
            time.sleep(0.2)
            return [True] * len(texts)

        def die(texts):
            flag = os.environ.get("EXPLODE_FLAG")
            if flag and os.path.exists(flag) and any("DIE" in t for t in texts):
                os._exit(3)  # a worker killed outright (as by the OOM killer)
            return [True] * len(texts)

        def explode(texts):
            flag = os.environ.get("EXPLODE_FLAG")
            if flag and os.path.exists(flag) and any("BOOM" in t for t in texts):
                raise RuntimeError("planted failure")
            return [True] * len(texts)
    '''))
    dist = pkg / "rr_test_filters-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rr-test-filters\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[recipe_runner.filters]\nhas_word = rr_test_filters:HasWord\nexplode = rr_test_filters:explode\n"
        "die = rr_test_filters:die\nslow = rr_test_filters:slow\n")
    monkeypatch.syspath_prepend(str(pkg))
    import importlib

    importlib.invalidate_caches()
    yield pkg
