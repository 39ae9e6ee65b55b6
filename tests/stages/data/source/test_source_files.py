"""Which files a files source reads: code globs, exclusions, a search that
never leaves its root nor reads special files, and the files as the stage's
local inputs."""

from __future__ import annotations

import glob
import logging
import os
import socket
import time
from pathlib import Path

import pytest

from recipe_runner import StageError
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


def test_local_inputs_are_every_file_read_and_cheap(tmp_path, stdlib):
    """The stage's local inputs name each file read (its content goes into the
    key instead of the path): a single file under its field, each file a
    directory or pattern matched under ``<field>/<relative name>``, a file
    added is a new input; and listing them over a whole standard library is
    quick (directory listings only: the engine hashes and caches content)."""
    d = tmp_path / "data"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.txt").write_text(f"document {i}\n")
    (d / "notes.md").write_text("not matched")
    one = tmp_path / "one.txt"
    one.write_text("a single file")
    p = SourceParams.model_validate(
        {"sources": [{"path": str(d), "glob": "*.txt"}, {"path": [str(one), str(d / "*.txt")]}]}
    )
    inputs = SourceStage.local_inputs(p)
    assert inputs == SourceStage.local_inputs(p)
    assert inputs == {
        "sources.0.path": d / "0.txt",
        **{f"sources.0.path/{i}.txt": d / f"{i}.txt" for i in range(3)},
        "sources.1.path.0": one,
        "sources.1.path.1": d / "0.txt",
        **{f"sources.1.path.1/{i}.txt": d / f"{i}.txt" for i in range(3)},
    }
    (d / "3.txt").write_text("new")
    assert SourceStage.local_inputs(p)["sources.0.path/3.txt"] == d / "3.txt"
    missing = SourceParams.model_validate({"sources": [{"path": str(tmp_path / "nope")}]})
    assert SourceStage.local_inputs(missing) == {}  # the run says what is missing
    big = SourceParams.model_validate({"sources": [{"path": str(stdlib), "glob": "**/*.py"}]})
    t = time.perf_counter()
    assert len(SourceStage.local_inputs(big)) > 1000
    assert time.perf_counter() - t < 10


@pytest.fixture()
def hostile_tree(tmp_path):
    """A data directory holding two documents, a link to one of them (inside:
    read), links to /etc and to a file outside, a link to itself, a link to
    the directory itself (a loop), a dangling link, a FIFO and a socket."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("document a")
    (root / "sub" / "b.txt").write_text("document b")
    (tmp_path / "outside.txt").write_text("outside the root")
    (root / "inside_link.txt").symlink_to(root / "sub" / "b.txt")
    (root / "etc").symlink_to("/etc")
    (root / "outside_link.txt").symlink_to(tmp_path / "outside.txt")
    (root / "self.txt").symlink_to(root / "self.txt")
    (root / "sub" / "loop").symlink_to(root)
    (root / "dangling.txt").symlink_to(root / "gone.txt")
    os.mkfifo(root / "pipe.txt")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(root / "sock.txt"))
    yield root
    server.close()


EXPECTED_SKIPS = {
    "broken symlink": 1,
    "fifo": 1,
    "socket": 1,
    "symlink loop": 2,
    "symlink outside root": 2,
}


@pytest.mark.parametrize("entry", ["pattern", "directory"])
def test_a_search_never_leaves_its_root_nor_reads_special_files(tmp_path, hostile_tree, run_source, caplog, entry):
    """The issue's case: a glob over a directory holding a link to / read
    /etc (/etc/shadow included) 41 times over. Links out of the root and
    loops are not followed, FIFOs and sockets not read; the metrics and the
    log say how many were passed over and why; a link inside the root is read."""
    root = hostile_tree
    source = {"path": str(root / "**" / "*")} if entry == "pattern" else {"path": str(root), "glob": "**/*"}
    with caplog.at_level(logging.WARNING):
        dd, m = run_source(tmp_path, [source], name=entry)
    assert sorted(dd["train"]["text"]) == ["document a", "document b", "document b"]
    assert m["skipped_files"] == EXPECTED_SKIPS
    assert "passed over 7 path(s) under the sources' roots: 1 broken symlink, 1 fifo" in caplog.text
    inputs = SourceStage.local_inputs(SourceParams.model_validate({"sources": [source]}))
    assert sorted(k.split("/", 1)[1] for k in inputs if "/" in k) == ["a.txt", "inside_link.txt", "sub/b.txt"]


def test_a_named_fifo_or_device_is_not_read(tmp_path, hostile_tree, run_source):
    with pytest.raises(StageError, match="no files match .*pipe.txt; passed over: 1 fifo"):
        run_source(tmp_path, [{"path": str(hostile_tree / "pipe.txt")}], name="fifo")
    with pytest.raises(StageError, match="passed over: 1 device"):
        run_source(tmp_path, [{"path": "/dev/zero"}], name="device")
    dd, _ = run_source(tmp_path, [{"path": str(hostile_tree / "outside_link.txt")}], name="named")
    assert list(dd["train"]["text"]) == ["outside the root"]  # named by the recipe itself: read


def test_glob_rules_are_globs_and_pathlibs(tmp_path, run_source):
    """A pattern follows glob.glob (names starting with '.' only where the
    pattern says so), a directory's 'glob' follows pathlib (every name), as
    before the search was made safe."""
    d = tmp_path / "d"
    for rel in ("x.txt", ".hidden.txt", "sub/y.txt", ".git/z.txt", "sub/deep/w.py"):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(rel)
    for pattern in ("*.txt", "**/*.txt", "**/*", "sub/*", ".*", "**/.git/*"):
        dd, _ = run_source(tmp_path, [{"path": str(d / pattern)}], name=f"p{len(pattern)}{pattern[0]}")
        expected = sorted(Path(h).read_text() for h in glob.glob(str(d / pattern), recursive=True) if Path(h).is_file())
        assert sorted(dd["train"]["text"]) == expected, pattern
        dd, _ = run_source(tmp_path, [{"path": str(d), "glob": pattern}], name=f"g{len(pattern)}{pattern[0]}")
        assert sorted(dd["train"]["text"]) == sorted(h.read_text() for h in d.glob(pattern) if h.is_file()), pattern
