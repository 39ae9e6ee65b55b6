"""The data stages through the CLI: the bundled recipe end to end
(offline), numbers refused at validate time, and keys that follow the
content of the local files a recipe names, not their place."""

from __future__ import annotations

import json
import os
import re
import shutil
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


ABSURD = {
    "count": ("sources: [{path: data.txt, count: 100000000000000000000}]", "sources[0].files.count", "10000000000"),
    "weight": ("sources: [{path: data.txt, weight: .inf}]", "sources[0].files.weight", "finite number"),
    "validation": ("sources: [{path: data.txt}], validation: .nan", "params.validation", "not infinite or NaN"),
    "seed": ("sources: [{path: data.txt}], seed: -1", "params.seed", "greater than or equal to 0"),
}
ABSURD_DOWNSTREAM = {
    "num_proc": ("filter", "num_proc: 0", "params.num_proc", "'auto' or an integer from 1"),
    "threshold": ("dedup", "threshold: .nan", "params.threshold", "finite number"),
    "minhash_seed": ("dedup", "minhash_seed: -1", "params.minhash_seed", "greater than or equal to 0"),
    "batch_size": ("dedup", "batch_size: 1000000000", "params.batch_size", "less than or equal to 1000000"),
    "vocab_size": ("tokenize", "train: {vocab_size: 1000000000}", "params.train.vocab_size", "1048576"),
    "min_score": (
        "filter",
        "filters: [{type: language, min_score: .inf}]",
        "filters[0].language.min_score",
        "finite number",
    ),
    "length": (
        "filter",
        "filters: [{type: length, min_chars: 10, max_chars: 5}]",
        "filters[0].length",
        "min_chars (10) is above max_chars (5)",
    ),
    "n_grams": (
        "filter",
        "filters: [{type: gopher_repetition, top_n_grams: [[0, 0.2]]}]",
        "top_n_grams[0][0]",
        "greater than or equal to 1",
    ),
}


@pytest.mark.parametrize("case", sorted(ABSURD) + sorted(ABSURD_DOWNSTREAM))
def test_absurd_numbers_are_refused_at_validate_with_their_place(tmp_path, recipe_cli, case):
    """Negative counts and seeds, non-finite floats, values beyond any use:
    `recipe validate` refuses them (exit 2) naming file:line:col and the field."""
    (tmp_path / "data.txt").write_text("a document")
    if case in ABSURD:
        params, field, message = ABSURD[case]
        lines = [f"  - {{type: source, params: {{{params}}}}}"]
    else:
        stage, params, field, message = ABSURD_DOWNSTREAM[case]
        lines = [
            "  - {type: source, params: {sources: [{path: data.txt}]}}",
            f"  - {{type: {stage}, params: {{{params}}}}}",
        ]
    recipe = tmp_path / "absurd.yaml"
    recipe.write_text("name: absurd\nstages:\n" + "\n".join(lines) + "\n")
    proc = recipe_cli("validate", str(recipe))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = len(lines) + 2
    located = re.search(
        rf"{re.escape(str(recipe))}:{line}:\d+: stage '\w+': stages\[\d\]\.\S*{re.escape(field)}", proc.stderr
    )
    assert located and message in proc.stderr, proc.stderr


MOVED = """
name: moved
seed: 5
stages:
  - type: source
    params:
      sources:
        - {name: prose, path: "${paths.recipe_dir}/data/prose.txt", split_by: blank_lines}
        - {name: code, path: "${paths.recipe_dir}/data/code", glob: "**/*.py"}
        - {name: notes, path: "${paths.recipe_dir}/data/notes/*.txt"}
  - type: filter
    params:
      filters:
        - {type: paragraph_length, min_lines: 1, top_lines: 1, min_line_chars: 1}
        - {type: language, languages: [en, fr, de], min_score: 0.0, model_path: "${paths.recipe_dir}/lid.ftz"}
  - type: tokenize
    params: {tokenizer: "${paths.recipe_dir}/tokenizer"}
"""


@pytest.fixture()
def checkout(tmp_path, data_dir, stdlib, tiny_tokenizer_dir):
    """A recipe with its data (a text file, a tree of code, notes by pattern),
    a fastText model file and a tokenizer directory, all beside it."""
    from recipe_runner_stages.data.filter.language import shipped_langid_model

    root = tmp_path / "a"
    (root / "data" / "notes").mkdir(parents=True)
    (root / "data" / "prose.txt").write_text((data_dir / "the-verdict.txt").read_text())
    shutil.copytree(stdlib / "json", root / "data" / "code" / "json", ignore=shutil.ignore_patterns("__pycache__"))
    for i, line in enumerate((data_dir / "tinyshakespeare.txt").read_text().split("\n\n")[:5]):
        (root / "data" / "notes" / f"{i}.txt").write_text(line)
    shutil.copy(shipped_langid_model(), root / "lid.ftz")
    shutil.copytree(tiny_tokenizer_dir, root / "tokenizer")
    (root / "moved.yaml").write_text(MOVED)
    return root


def same_size_edit(path: Path, old: bytes, new: bytes) -> None:
    """Replace ``old`` by ``new`` (same length) once and put the mtime back."""
    st = path.stat()
    data = path.read_bytes()
    assert len(old) == len(new) and old in data
    path.write_bytes(data.replace(old, new, 1))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_keys_follow_the_content_of_local_files_not_their_place(tmp_path, checkout, recipe_cli, stage_keys):
    """The same recipe and data copied elsewhere has the same stage keys; an
    edit of a data file, of the model file or of the tokenizer (same size,
    mtime put back) changes the key of the stage that reads it, and `recipe
    plan` names the file."""
    elsewhere = tmp_path / "elsewhere" / "b"
    shutil.copytree(checkout, elsewhere)
    runs = tmp_path / "runs"
    proc = recipe_cli("run", str(checkout / "moved.yaml"), "--workdir", str(runs))
    assert proc.returncode == 0, proc.stderr
    here = stage_keys(checkout / "moved.yaml", runs)
    assert stage_keys(elsewhere / "moved.yaml", runs) == here and None not in here.values()

    code = elsewhere / "data" / "code" / "json" / "decoder.py"
    same_size_edit(code, b"JSONDecodeError", b"JSONDecodeErrox")
    assert stage_keys(elsewhere / "moved.yaml", runs)["source"] != here["source"]
    plan = json.loads(recipe_cli("plan", str(elsewhere / "moved.yaml"), "--workdir", str(runs), "--json").stdout)
    assert plan[0]["action"] == "run" and "local input sources.1.path/json/decoder.py changed" in plan[0]["reason"]
    same_size_edit(code, b"JSONDecodeErrox", b"JSONDecodeError")
    assert stage_keys(elsewhere / "moved.yaml", runs) == here

    same_size_edit(elsewhere / "tokenizer" / "tokenizer.json", b'"<pad>"', b'"<pax>"')
    keys = stage_keys(elsewhere / "moved.yaml", runs)
    assert keys["source"] == here["source"] and keys["tokenize"] != here["tokenize"]
    model = elsewhere / "lid.ftz"
    tail = model.read_bytes()[-8:]
    same_size_edit(model, tail, bytes(255 - b for b in tail))
    keys = stage_keys(elsewhere / "moved.yaml", runs)
    assert keys["source"] == here["source"] and keys["filter"] != here["filter"]
