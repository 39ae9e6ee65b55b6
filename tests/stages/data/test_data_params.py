"""The data stages' run settings (``recipe_runner.run_setting``): each one
changes how a stage runs (worker processes, batches, checkpoint shards),
never a byte of what it writes, so the engine leaves it out of the stage's
key and a cached output is reused when it changes."""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from recipe_runner.testing import run_stage
from recipe_runner_stages.data.dedup.stage import DedupStage
from recipe_runner_stages.data.filter.stage import FilterStage
from recipe_runner_stages.data.pack.stage import PackStage
from recipe_runner_stages.data.source.stage import SourceStage
from recipe_runner_stages.data.tokenize.stage import TokenizeStage

STAGES = {
    "source": SourceStage,
    "filter": FilterStage,
    "dedup": DedupStage,
    "tokenize": TokenizeStage,
    "pack": PackStage,
}

#: (stage, run setting) -> two values that make the stage run differently
CASES = {
    ("filter", "num_proc"): (1, 2),
    ("filter", "batch_size"): (1000, 7),
    ("filter", "shard_size"): (50_000, 37),
    ("dedup", "num_proc"): (1, 2),
    ("dedup", "batch_size"): (1000, 7),
    ("dedup", "shard_size"): (50_000, 37),
    ("dedup", "method"): ("in_memory", "multi_pass"),
    ("dedup", "max_memory_mb"): (1024, 1),  # 'auto': in memory, then on disk (770 documents, 1.2 MB)
    ("tokenize", "num_proc"): (1, 2),
    ("tokenize", "batch_size"): (1000, 7),
    ("tokenize", "shard_size"): (50_000, 37),
    ("source", "executor"): ({"type": "local"}, {"type": "ray"}),
    ("filter", "executor"): ({"type": "local"}, {"type": "ray"}),
    ("dedup", "executor"): ({"type": "local"}, {"type": "ray"}),
    ("tokenize", "executor"): ({"type": "local"}, {"type": "ray"}),
}
#: run in the last test of this module, with a local Ray instance (started once: see ``local_ray``)
ON_RAY = sorted(case for case in CASES if case[1] == "executor")


def run_settings_of(stage_cls: Any) -> set[str]:
    """The fields marked as run settings anywhere in a stage's parameters (nested options too)."""
    schema = stage_cls.Params.model_json_schema()
    models = [schema, *schema.get("$defs", {}).values()]
    return {name for m in models for name, prop in m.get("properties", {}).items() if prop.get("run_setting")}


def test_every_run_setting_is_tested_here():
    marked = {(stage, name) for stage, cls in STAGES.items() for name in run_settings_of(cls)}
    assert marked == set(CASES)


@pytest.fixture(scope="module")
def documents(tmp_path_factory, real_texts, save_texts):
    """Real documents of every shape, some repeated, with a column that has nulls."""
    texts = real_texts[:700] + real_texts[-40:] + real_texts[:30]
    urls = [None if i % 5 == 0 else f"https://example.org/{i}" for i in range(len(texts))]
    return save_texts(tmp_path_factory.mktemp("documents") / "in", texts, url=urls)


def stage_params(stage: str, tokenizer: Path) -> dict[str, Any]:
    """Parameters that exercise the stage's batched, sharded paths (c4 edits the text; source: a shard per
    source, text and code)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return {
        "source": {
            "sources": [
                {"path": str(stdlib / "json"), "glob": "*.py"},
                {"path": str(stdlib / "email" / "architecture.rst"), "split_by": "blank_lines"},
                {"path": str(stdlib / "email"), "glob": "*.py", "count": 20},
            ],
            "validation": 0.1,
        },
        "filter": {"filters": [{"type": "length", "min_words": 3}, {"type": "paragraph_repetition"}, {"type": "c4"}]},
        "dedup": {"near_duplicates": True},
        "tokenize": {"tokenizer": str(tokenizer)},
    }[stage]


def output_digests(path: Path) -> dict[str, str]:
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file()
    }


LOCAL = sorted(set(CASES) - set(ON_RAY))


@pytest.mark.parametrize(("stage", "setting"), LOCAL, ids=[f"{s}.{f}" for s, f in LOCAL])
def test_a_run_setting_leaves_every_output_byte_unchanged(tmp_path, documents, tiny_tokenizer_dir, stage, setting):
    check_run_setting(tmp_path, documents, tiny_tokenizer_dir, stage, setting)


@pytest.mark.parametrize(("stage", "setting"), ON_RAY, ids=[f"{s}.{f}" for s, f in ON_RAY])
def test_the_executor_leaves_every_output_byte_unchanged(
    tmp_path, documents, tiny_tokenizer_dir, local_ray, stage, setting
):
    """Local fork pool against Ray tasks (last in the module: no pool is forked
    from this process once it is connected to Ray)."""
    check_run_setting(tmp_path, documents, tiny_tokenizer_dir, stage, setting)


def check_run_setting(tmp_path: Path, documents: Any, tiny_tokenizer_dir: Path, stage: str, setting: str) -> None:
    first, second = CASES[stage, setting]
    params = stage_params(stage, tiny_tokenizer_dir)
    if setting in ("num_proc", "executor") and stage != "source":
        params["shard_size"] = 60  # several shards, so that two workers (or Ray tasks) share them
    runs = [
        run_stage(STAGES[stage], {**params, setting: value}, inputs={"dataset": documents}, workdir=tmp_path / str(i))
        for i, value in enumerate((first, second))
    ]
    outputs = [r.outputs["dataset"].path for r in runs]
    assert output_digests(outputs[0]) == output_digests(outputs[1])
    assert len(output_digests(outputs[0])) >= 4  # data, state.json, dataset_info.json, dataset_dict.json
    if setting == "shard_size":
        assert runs[1].metrics["shards_computed"] > runs[0].metrics["shards_computed"]
    if stage == "tokenize":
        tok = [output_digests(r.outputs["tokenizer"].path) for r in runs]
        assert tok[0] == tok[1]
