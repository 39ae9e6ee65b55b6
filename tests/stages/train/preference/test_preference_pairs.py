"""preference/pairs.py on real hh-rlhf pairs: split at the last assistant
turn, pairs whose texts do not share the prompt dropped and counted."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recipe_runner.stage import StageContext
from recipe_runner_stages.train.preference.hh_rlhf import HH_ASSISTANT, split_hh
from recipe_runner_stages.train.preference.pairs import prepare_preferences

MakeContext = Callable[..., StageContext[Any]]


def test_hh_rlhf_pairs_are_split_at_the_last_assistant_turn(data_dir: Path, make_context: MakeContext) -> None:
    from datasets import Dataset

    with gzip.open(data_dir / "hh-rlhf-harmless-base-test.jsonl.gz", "rt") as f:
        recs = [json.loads(line) for _, line in zip(range(200), f, strict=False)]
    ctx = make_context(None, name="reward", seed=0)
    ds = prepare_preferences(Dataset.from_list(recs), ctx, "train")
    assert sorted(ds.column_names) == ["chosen", "prompt", "rejected"]
    # independent check of each kept row against the raw texts
    kept = {(r["prompt"] + r["chosen"]) for r in ds}
    n_ok = 0
    for r in recs:
        i = r["chosen"].rfind("\n\nAssistant:")
        prompt = r["chosen"][: i + len("\n\nAssistant:")]
        if r["rejected"].startswith(prompt):
            n_ok += 1
            assert r["chosen"] in kept
    assert len(ds) == n_ok == 200 - ctx.metrics["hh_pairs_dropped_train"]
    assert all(
        p.endswith(HH_ASSISTANT) and HH_ASSISTANT not in c for p, c in zip(ds["prompt"], ds["chosen"], strict=True)
    )
    assert split_hh("no markers here") is None
