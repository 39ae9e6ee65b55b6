"""`source` over fsspec URLs, against a real S3 API server (moto's server
mode on 127.0.0.1, started by this module) holding the shipped text: the
same documents as the same files read locally, keys that follow the
objects' listing, errors without tracebacks, and reads that stream."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

BUCKET = "corpus"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

#: runs the CLI with the named packages made unfindable (sys.modules[name] = None), as if not installed
CLI_WITHOUT = "import sys\nfor m in sys.argv[1].split(','):\n    sys.modules[m] = None\n" + (
    "from recipe_runner.cli import main\nsys.argv = ['recipe', *sys.argv[2:]]\nsys.exit(main())"
)


@pytest.fixture(scope="module")
def s3(tmp_path_factory, data_dir, start_s3_server):
    """A moto S3 server on 127.0.0.1 with the bucket 'corpus' holding, under
    'corpus/' (and the same tree on disk, returned as 'local'): the two shipped
    texts, the paragraphs of tinyshakespeare as JSON Lines (plain and gzipped)
    and the-verdict's paragraphs with tinyshakespeare's lines as Parquet."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    url, client, _ = start_s3_server(BUCKET)
    local = tmp_path_factory.mktemp("local") / "corpus"
    verdict = (data_dir / "the-verdict.txt").read_text()
    shakespeare = (data_dir / "tinyshakespeare.txt").read_text()
    paragraphs = [p for p in shakespeare.split("\n\n") if p.strip()]
    jsonl = "".join(json.dumps({"text": p, "id": i}) + "\n" for i, p in enumerate(paragraphs)).encode()
    table = pa.table({"text": verdict.split("\n\n") + shakespeare.splitlines()})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=2000)
    files = {
        "text/the-verdict.txt": verdict.encode(),
        "text/tinyshakespeare.txt": shakespeare.encode(),
        "json/plays.jsonl": jsonl,
        "json/plays-again.jsonl.gz": gzip.compress(jsonl, mtime=0),
        "parquet/lines.parquet": buf.getvalue(),
    }
    for key, body in files.items():
        client.put_object(Bucket=BUCKET, Key=f"corpus/{key}", Body=body)
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(body)
    return {"url": url, "client": client, "local": local, "env": {**CREDS, "HF_DATASETS_OFFLINE": "1"}}


def _recipe(path: Path, root: str, options: str, name: str = "remote") -> Path:
    """The same three sources (a directory of text, a pattern of JSON Lines
    plain and gzipped, one Parquet file) under ``root``, a URL or a directory."""
    path.write_text(
        f"""
name: {name}
seed: 7
stages:
  - type: source
    params:
      sources:
        - {{name: text, path: "{root}/text", glob: "*.txt", split_by: blank_lines{options}}}
        - {{name: plays, path: "{root}/json/*.jsonl*", keep_columns: [id]{options}}}
        - {{name: lines, path: "{root}/parquet/lines.parquet"{options}}}
      validation: 0.1
"""
    )
    return path


def _options(s3: dict) -> str:
    return f", storage_options: {{endpoint_url: '{s3['url']}'}}"


def _output(workdir: Path) -> Path:
    """The dataset the last run of the source stage committed in ``workdir``."""
    (manifest,) = workdir.glob("*/manifest.json")
    (stage,) = json.loads(manifest.read_text())["stages"]
    return manifest.parent / "stages" / f"source-{stage['fingerprint'][:12]}" / "outputs" / "dataset"


def _files(path: Path) -> dict[str, str]:
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file()
    }


def _rows(path: Path) -> dict[str, list[dict]]:
    from datasets import load_from_disk

    dd = load_from_disk(str(path))
    return {split: dd[split].to_list() for split in dd}


def test_s3_and_file_urls_give_the_documents_of_the_local_files(tmp_path, s3, recipe_cli):
    local = _recipe(tmp_path / "local.yaml", str(s3["local"]), "")
    remote = _recipe(tmp_path / "s3.yaml", f"s3://{BUCKET}/corpus", _options(s3))
    via_file = _recipe(tmp_path / "file.yaml", f"file://{s3['local']}", "")
    outputs = {}
    for recipe in (local, remote, via_file):
        proc = recipe_cli("run", str(recipe), "--workdir", str(tmp_path / recipe.stem), env=s3["env"])
        assert proc.returncode == 0, proc.stderr
        outputs[recipe.stem] = _output(tmp_path / recipe.stem)
    rows = _rows(outputs["local"])
    assert len(rows["train"]) > 10_000 and {r["source"] for r in rows["train"]} == {"text", "plays", "lines"}
    assert sum(r["source"] == "plays" for r in rows["train"] + rows["validation"]) == 2 * len(
        [p for p in (s3["local"] / "text" / "tinyshakespeare.txt").read_text().split("\n\n") if p.strip()]
    )
    for other in ("s3", "file"):
        assert _rows(outputs[other]) == rows
        assert _files(outputs[other]) == _files(outputs["local"])  # byte for byte


def test_an_edited_object_re_keys_the_stage_an_unchanged_one_is_cached(tmp_path, s3, recipe_cli):
    client = s3["client"]
    for key in ("a.txt", "b.txt", "elsewhere/c.txt"):
        client.put_object(Bucket=BUCKET, Key=f"keys/{key}", Body=b"first paragraph\n\nsecond paragraph\n")
    recipe = tmp_path / "keys.yaml"
    recipe.write_text(
        f"""
name: keys
stages:
  - type: source
    params:
      sources:
        - {{path: "s3://{BUCKET}/keys/*.txt", split_by: blank_lines{_options(s3)}}}
"""
    )
    wd, env = str(tmp_path / "w"), s3["env"]
    assert recipe_cli("run", str(recipe), "--workdir", wd, env=env).returncode == 0
    again = recipe_cli("run", str(recipe), "--workdir", wd, env=env)
    assert again.returncode == 0 and "stage source (source): cached" in again.stderr, again.stderr
    # an object outside the pattern: still cached; the same bytes uploaded again: a new mtime, the same ETag
    client.put_object(Bucket=BUCKET, Key="keys/elsewhere/c.txt", Body=b"changed\n")
    client.put_object(Bucket=BUCKET, Key="keys/a.txt", Body=b"first paragraph\n\nsecond paragraph\n")
    again = recipe_cli("run", str(recipe), "--workdir", wd, env=env)
    assert "stage source (source): cached" in again.stderr, again.stderr
    # the same size, other bytes: the ETag changes
    client.put_object(Bucket=BUCKET, Key="keys/b.txt", Body=b"first paragraph\n\nsecond Paragraph\n")
    plan = recipe_cli("plan", str(recipe), "--workdir", wd, "--json", env=env)
    assert json.loads(plan.stdout)[0]["action"] == "run", plan.stdout + plan.stderr
    rerun = recipe_cli("run", str(recipe), "--workdir", wd, env=env)
    assert rerun.returncode == 0 and "running [" in rerun.stderr, rerun.stderr
    texts = [r["text"] for r in _rows(_output(tmp_path / "w"))["train"]]
    assert texts == ["first paragraph", "second paragraph", "first paragraph", "second Paragraph"]


def _failing(tmp_path: Path, recipe_cli, s3: dict, path: str, env: dict | None = None, without: str = "") -> str:
    recipe = tmp_path / "fails.yaml"
    recipe.write_text(
        f"""
name: fails
stages:
  - type: source
    params:
      sources:
        - {{name: broken, path: "{path}"{_options(s3)}}}
"""
    )
    args = ("run", str(recipe), "--workdir", str(tmp_path / "w"))
    env = {**s3["env"], **(env or {})}
    if without:
        import os

        proc = subprocess.run(
            [sys.executable, "-c", CLI_WITHOUT, without, *args],
            env={**os.environ, "COLUMNS": "200", **env},
            capture_output=True,
            text=True,
            timeout=300,
        )
    else:
        proc = recipe_cli(*args, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc.stderr


def test_missing_buckets_objects_credentials_and_packages_are_named(tmp_path, s3, recipe_cli):
    err = _failing(tmp_path, recipe_cli, s3, "s3://no-such-bucket/corpus/*.jsonl")
    assert "the bucket 'no-such-bucket' of s3://no-such-bucket/corpus/*.jsonl does not exist" in err
    err = _failing(tmp_path, recipe_cli, s3, f"s3://{BUCKET}/corpus/json/missing.jsonl")
    assert f"source 'broken': s3://{BUCKET}/corpus/json/missing.jsonl does not exist" in err
    err = _failing(tmp_path, recipe_cli, s3, f"s3://{BUCKET}/corpus/json/*.parquet")
    assert f"no files match s3://{BUCKET}/corpus/json/*.parquet" in err
    err = _failing(tmp_path, recipe_cli, s3, f"s3://{BUCKET}/corpus/json/plays.jsonl", without="s3fs")
    assert 'needs the package s3fs, which is not installed: pip install "recipe-runner[s3]"' in err
    s3["client"].put_object(Bucket=BUCKET, Key="bad/notes.jsonl", Body=b'{"text": "a"}\n{"text": "b"}\n{"text": c}\n')
    err = _failing(tmp_path, recipe_cli, s3, f"s3://{BUCKET}/bad/notes.jsonl")
    assert f"cannot read json data: s3://{BUCKET}/bad/notes.jsonl:3:" in err
    _check_credentials(s3, True)  # from now on the server refuses the made-up keys
    try:
        err = _failing(tmp_path, recipe_cli, s3, f"s3://{BUCKET}/corpus/json/plays.jsonl")
    finally:
        _check_credentials(s3, False)
    assert f"access to s3://{BUCKET}/corpus/json/plays.jsonl was refused" in err
    assert "AWS_ACCESS_KEY_ID" in err


def _check_credentials(s3: dict, on: bool) -> None:
    """Make the moto server check credentials against its IAM (none are known there) or not."""
    count = b"0" if on else b"inf"
    headers = {"Content-Type": "text/plain"}
    req = urllib.request.Request(f"{s3['url']}/moto-api/reset-auth", data=count, headers=headers, method="POST")
    urllib.request.urlopen(req, timeout=10).close()


def test_validate_touches_no_network_and_refuses_credentials_in_the_recipe(tmp_path, recipe_cli, cli_imports):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        """
name: offline
stages:
  - type: source
    params:
      sources:
        - {path: "s3://corpus/x/*.jsonl", storage_options: {endpoint_url: "http://127.0.0.1:9"}}
"""
    )
    out = cli_imports(["validate", str(recipe)])
    assert out.exit_code == 0 and not out.modules & {"s3fs", "fsspec", "botocore"}, out.stderr
    recipe.write_text(recipe.read_text().replace('endpoint_url: "http://127.0.0.1:9"', "key: AKIA, secret: hush"))
    proc = recipe_cli("validate", str(recipe))
    assert proc.returncode == 2
    assert "sources.0.storage_options: ['key', 'secret'] hold credentials" in proc.stderr + proc.stdout
    assert "hush" not in proc.stderr + proc.stdout


def test_a_large_object_is_read_in_ranges_not_in_one_get(tmp_path, s3, data_dir, monkeypatch, caplog):
    """Parquet row groups are fetched as they are read: s3fs's own log of the
    S3 calls shows several ranged GETs, none of them the whole object."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recipe_runner.testing import run_stage
    from recipe_runner_stages.data.source.stage import SourceStage

    lines = [t for t in (data_dir / "tinyshakespeare.txt").read_text().splitlines() if t.strip()] * 8
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": lines}), buf, row_group_size=5000, compression="none", use_dictionary=False)
    size = len(buf.getvalue())
    assert size > 8 * 2**20
    s3["client"].put_object(Bucket=BUCKET, Key="big/lines.parquet", Body=buf.getvalue())
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    options = {"endpoint_url": s3["url"], "default_block_size": 2**20, "skip_instance_cache": True}
    caplog.set_level(logging.DEBUG, logger="s3fs")
    source = {"path": f"s3://{BUCKET}/big/lines.parquet", "storage_options": options}
    r = run_stage(SourceStage, {"sources": [source]}, workdir=tmp_path)
    assert r.metrics["train_documents"] == len(lines)
    ranges = [
        (int(a), int(b))
        for m in caplog.messages
        if "get_object" in m and "big/lines.parquet" in m
        for a, b in re.findall(r"'Range': 'bytes=(\d+)-(\d+)'", m)
    ]
    assert len(ranges) >= 3, caplog.messages
    assert max(b - a + 1 for a, b in ranges) <= size // 2, ranges


def test_an_object_added_while_the_stage_reads_is_an_error_not_a_commit(tmp_path, s3, data_dir, monkeypatch):
    """The listing is taken again once the objects are read: one added under
    the pattern meanwhile (here, as the first byte range is fetched) stops the
    stage; the next run reads both."""
    from recipe_runner import StageError
    from recipe_runner.testing import run_stage
    from recipe_runner_stages.data.source.stage import SourceStage

    client = s3["client"]
    body = (data_dir / "the-verdict.txt").read_bytes()
    client.put_object(Bucket=BUCKET, Key="moving/a.txt", Body=body)
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)

    class AddAnObject(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "get_object" in record.getMessage() and "moving/a.txt" in record.getMessage():
                client.put_object(Bucket=BUCKET, Key="moving/b.txt", Body=body)

    handler = AddAnObject()
    s3fs_log = logging.getLogger("s3fs")
    s3fs_log.addHandler(handler)
    monkeypatch.setattr(s3fs_log, "level", logging.DEBUG)
    options = {"endpoint_url": s3["url"], "skip_instance_cache": True}
    source = {"path": f"s3://{BUCKET}/moving/*.txt", "split_by": "blank_lines", "storage_options": options}
    try:
        with pytest.raises(StageError, match=r"moving/\*\.txt changed while the stage read it"):
            run_stage(SourceStage, {"sources": [source]}, workdir=tmp_path / "first")
    finally:
        s3fs_log.removeHandler(handler)
    r = run_stage(SourceStage, {"sources": [source]}, workdir=tmp_path / "second")
    assert r.metrics["files"] == 2


def test_an_entry_keyed_by_a_listing_error_is_not_read_when_it_lists_later(tmp_path, s3, monkeypatch):
    """Refused credentials while the key is computed, accepted by the time the
    stage runs: the key holds the error, so the stage reads nothing (its output
    would be reused whenever the error recurs); the next plan and run go on."""
    from recipe_runner import StageError
    from recipe_runner.testing import run_stage
    from recipe_runner_stages.data.source.stage import SourceParams, SourceStage

    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    source = {"path": f"s3://{BUCKET}/corpus/text/the-verdict.txt", "storage_options": {"endpoint_url": s3["url"]}}
    params = SourceParams.model_validate({"sources": [source]})
    _check_credentials(s3, True)
    try:
        keyed = SourceStage.fingerprint_extra(params)
    finally:
        _check_credentials(s3, False)
    assert "was refused" in keyed["sources.0.path"]["error"]
    with pytest.raises(StageError, match="could not be listed when the stage's key was computed .* and can now"):
        run_stage(SourceStage, {"sources": [source]}, workdir=tmp_path / "a")
    assert SourceStage.fingerprint_extra(params)["sources.0.path"][0][1] > 0
    assert run_stage(SourceStage, {"sources": [source]}, workdir=tmp_path / "b").metrics["train_documents"] == 1
