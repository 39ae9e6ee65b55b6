"""Engine tests run the real `recipe` CLI in subprocesses against the
test-only plugin distribution `rr-testplugin` (tests/plugins/), installed
into the environment like any third-party plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def _recipe_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 120, check: bool | None = None
) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
    e.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "recipe_runner.cli", *args],
        cwd=cwd,
        env=e,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def _status_json(recipe: Path, workdir: Path, *extra: str) -> dict:
    proc = _recipe_cli("status", str(recipe), "--workdir", str(workdir), "--json", *extra, check=True)
    return json.loads(proc.stdout)


@pytest.fixture()
def recipe_cli():
    """Run `recipe ARGS...` in a subprocess: recipe_cli("run", path, check=True)."""
    return _recipe_cli


@pytest.fixture()
def write():
    """Write dedented text to a path (parents created) and return the path."""
    return _write


@pytest.fixture()
def status_json():
    """`recipe status RECIPE --workdir DIR --json`, parsed."""
    return _status_json


@pytest.fixture()
def run_recipe():
    """`recipe run RECIPE --workdir DIR ARGS...` in a subprocess."""

    def run(recipe: Path, workdir: Path, *args: str) -> subprocess.CompletedProcess:
        return _recipe_cli("run", str(recipe), "--workdir", str(workdir), *args)

    return run


@pytest.fixture()
def chain(tmp_path) -> Path:
    return _write(
        tmp_path / "chain.yaml",
        """
        name: chain
        seed: 7
        stages:
          - type: count
            params: {n: 4}
          - type: multiply
            params: {factor: 3}
          - type: total
        """,
    )


@pytest.fixture(autouse=True)
def _require_test_plugin():
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("rr-testplugin")
    except PackageNotFoundError:
        pytest.fail(
            "the test plugin is not installed: pip install -e tests/plugins/rr_testplugin "
            "tests/plugins/rr_testplugin_dup (the README's test command does this)"
        )


TINY_PRETRAIN = """
name: ddp-tiny
seed: 7
defaults: {{cpu_threads: 1}}
stages:
  - type: source
    params:
      sources:
        - {{path: "{data}/the-verdict.txt", split_by: blank_lines}}
      validation: 0.1
  - type: tokenize
    params: {{train: {{algorithm: bpe, vocab_size: 512}}}}
  - type: pack
    params: {{max_seq_length: 64}}
  - type: init
    params:
      model_type: llama
      config: {{num_hidden_layers: 2, hidden_size: 32, intermediate_size: 64, num_attention_heads: 2,
               max_position_embeddings: 64}}
  - type: pretrain
    params: {{max_steps: 6, per_device_train_batch_size: 4, learning_rate: 3.0e-3, warmup_steps: 2,
             logging_steps: 1, save_steps: 100}}
"""


@pytest.fixture()
def tiny_pretrain_recipe(tmp_path, data_dir) -> Path:
    """A data-to-pretrain recipe (run name ddp-tiny) on The Verdict: a 2-layer Llama, 6 steps of batch 4."""
    return _write(tmp_path / "r.yaml", TINY_PRETRAIN.format(data=data_dir))


@pytest.fixture(scope="module")
def s3_endpoint(start_s3_server):
    """A real S3 API server (moto's server mode) on 127.0.0.1 with an empty bucket "teams"
    (one server per test module); its environment for the CLI."""
    url, _, creds = start_s3_server("teams")
    return {**creds, "AWS_ENDPOINT_URL": url}


@pytest.fixture(params=["directory", "s3"])
def shared_cache(request, tmp_path):
    """``(cache URL, env)``: a shared cache directory, then the same on S3 (moto)."""
    if request.param == "directory":
        return str(tmp_path / "team-cache"), {}
    return f"s3://teams/cache-{tmp_path.name}", request.getfixturevalue("s3_endpoint")


SHARED_RECIPE = """
name: shared
seed: 3
stages:
  - type: count
    params: {n: 4, from_file: "${paths.recipe_dir}/offsets.json"}
  - {type: multiply, params: {factor: 2}}
  - type: total
"""


def _team_checkout(root: Path, text: str = SHARED_RECIPE) -> Path:
    """A copy of the recipe and its data at its own path."""
    root.mkdir(parents=True)
    (root / "offsets.json").write_text("[1, 2]")
    recipe = root / "shared.yaml"
    recipe.write_text(text)
    return recipe


@pytest.fixture()
def shared_recipe() -> str:
    """A three-stage test-plugin recipe (run name "shared") that reads a local offsets.json."""
    return SHARED_RECIPE


@pytest.fixture()
def team_checkout():
    """``team_checkout(root, text=shared_recipe) -> recipe path``: the recipe and its data copied to ``root``."""
    return _team_checkout


def _truncate_cached_count(cache: str, env: dict[str, str]) -> str:
    """Truncate the count stage's numbers.json in the cache; its path as `recipe verify` names it."""
    if not cache.startswith("s3://"):
        for record in Path(cache).glob("*/*/stage.json"):
            if json.loads(record.read_text())["stage"] == "count":
                victim = record.parent / "outputs" / "numbers" / "numbers.json"
                victim.write_text(victim.read_text()[:-2])
                return str(victim)
        raise AssertionError("no cached count stage found")
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    bucket, prefix = cache[len("s3://") :].split("/", 1)
    for obj in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]:
        if obj["Key"].endswith("/stage.json"):
            record = json.loads(client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
            if record["stage"] == "count":
                target = obj["Key"].rsplit("/", 1)[0] + "/outputs/numbers/numbers.json"
                body = client.get_object(Bucket=bucket, Key=target)["Body"].read()
                client.put_object(Bucket=bucket, Key=target, Body=body[:-2])
                return f"s3://{bucket}/{target}"
    raise AssertionError("no cached count stage found")


@pytest.fixture()
def truncate_cached_count():
    """``truncate_cached_count(cache URL, env) -> path``: cut two bytes off the count stage's output in a
    shared cache (a directory or S3), as a corrupt entry; the file's path as `recipe verify` names it."""
    return _truncate_cached_count
