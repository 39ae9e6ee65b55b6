"""The sft stage's key through the real CLI: a local data file's content (not
its path or mtime) is in it, cpu_threads (a run setting) is not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, "-m", "recipe_runner.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_an_edited_data_file_changes_the_key_and_cpu_threads_does_not(
    tmp_path: Path, tiny_model_dir: Path, data_dir: Path
) -> None:
    records = json.loads((data_dir / "instruction-data.json").read_text())[:16]
    data = tmp_path / "alpaca.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(
        textwrap.dedent(f"""\
        name: sft-key
        stages:
          - type: sft
            params: {{model_name_or_path: {tiny_model_dir}, data_path: {data}, method: full, max_steps: 1,
                      device: cpu, precision: fp32, cpu_threads: 1, num_samples: 0, eval_fraction: 0}}
        """)
    )
    wd = str(tmp_path / "runs")
    run = _cli("run", str(recipe), "--workdir", wd)
    assert run.returncode == 0, run.stderr[-3000:]

    def plan(*extra: str) -> dict[str, str]:
        proc = _cli("plan", str(recipe), "--workdir", wd, "--json", *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return dict(json.loads(proc.stdout)[0])

    assert plan("--set", "stages.sft.params.cpu_threads=2")["reason"] == "cached (run settings differ)"
    text = data.read_text()
    data.write_text(text.replace("a", "b", 1))  # same size, other content
    edited = plan()
    assert edited["action"] == "run" and edited["reason"] == "local input data_path changed"
