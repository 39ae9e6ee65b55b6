"""Which files a files source reads: code globs, exclusions, and the
fingerprint of their stats."""

from __future__ import annotations

import os
import time

from recipe_runner_stages.data.source.stage import SourceParams, SourceStage


def test_code_files_by_glob_one_document_each(tmp_path, run_source, stdlib):
    files = sorted((stdlib / "json").rglob("*.py"))
    dd, m = run_source(tmp_path, [{"path": str(stdlib / "json"), "glob": "**/*.py", "name": "code"}])
    assert list(dd["train"]["text"]) == [f.read_text() for f in files if f.read_text().strip()]
    # a glob pattern as the path, with an exclusion
    dd2, _ = run_source(tmp_path, [{"path": str(stdlib / "json" / "*.py"), "exclude": ["tool.py"]}], name="g")
    assert len(dd2["train"]) == len(
        [f for f in (stdlib / "json").glob("*.py") if f.name != "tool.py" and f.read_text().strip()]
    )


def test_fingerprint_covers_file_stats_and_is_cheap(tmp_path, stdlib):
    d = tmp_path / "data"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.txt").write_text(f"document {i}\n")
    p = SourceParams.model_validate({"sources": [{"path": str(d), "glob": "*.txt"}]})
    fp1 = SourceStage.fingerprint_extra(p)
    assert fp1 == SourceStage.fingerprint_extra(p)
    assert [e[0] for e in fp1[0]] == [str(d / f"{i}.txt") for i in range(3)]
    st = os.stat(d / "1.txt")
    os.utime(d / "1.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert SourceStage.fingerprint_extra(p) != fp1
    (d / "3.txt").write_text("new")
    assert len(SourceStage.fingerprint_extra(p)[0]) == 4
    big = SourceParams.model_validate({"sources": [{"path": str(stdlib), "glob": "**/*.py"}]})
    t = time.perf_counter()
    SourceStage.fingerprint_extra(big)
    assert time.perf_counter() - t < 5  # stat calls over the whole standard library
