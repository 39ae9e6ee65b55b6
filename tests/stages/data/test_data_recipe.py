"""The bundled data recipe, end to end through the CLI (offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "clean_and_pack.yaml"


def _run(workdir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "recipe_runner.cli", "run", str(RECIPE), "--workdir", str(workdir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_clean_and_pack_runs_end_to_end_and_then_is_cached(tmp_path):
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "clean-and-pack" / "manifest.json").read_text())
    stages = {s["name"]: s for s in manifest["stages"]}
    assert all(s["status"] == "done" for s in manifest["stages"])
    m = {name: s["metrics"] for name, s in stages.items()}
    assert m["filter"]["removed.paragraph_length"] > 0 and m["filter"]["documents_out"] > 1000
    assert m["source"]["documents.python"] == 120
    assert m["tokenize"]["vocab_size"] == 4096

    def artifact(stage: str, output: str) -> Path:
        a = stages[stage]["artifact"]
        return Path(a[output] if isinstance(a, dict) else a)

    packed = artifact("pack", "dataset")
    dd = load_from_disk(str(packed))
    rows = dd["train"].with_format("arrow")[:]
    assert rows.column("input_ids").type.list_size == 128 and len(rows) == m["pack"]["train_rows"] > 1000
    assert (packed / "parquet" / "train.parquet").is_file()
    tok = AutoTokenizer.from_pretrained(str(artifact("tokenize", "tokenizer")))
    assert len(tok) == 4096
    ids = rows.column("input_ids").combine_chunks().flatten().to_numpy()
    assert (ids == tok.bos_token_id).sum() > 1000 and (ids == tok.eos_token_id).sum() > 1000
    again = _run(tmp_path)
    assert again.returncode == 0
    manifest = json.loads((tmp_path / "clean-and-pack" / "manifest.json").read_text())
    assert all(s["cached"] for s in manifest["stages"]), [(s["name"], s["cached"]) for s in manifest["stages"]]
