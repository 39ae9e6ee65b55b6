"""bench/data_vs_datatrove.py at a tiny size: `recipe run` (source -> Gopher filters -> exact dedup ->
tokenize) and the same pipeline in datatrove's LocalPipelineExecutor keep the same documents and write
the same token ids. The bench asserts it; speed is not checked here."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_module():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("data_vs_datatrove")


def test_recipe_run_and_datatrove_keep_the_same_documents_and_token_ids(tmp_path):
    bench = bench_module()
    out = tmp_path / "result.json"
    args = ["--size-mb", "0.3", "--repeats", "1", "--workdir", str(tmp_path / "work"), "--json", str(out)]
    assert bench.main(args) == 0
    r = json.loads(out.read_text())
    # every step did something: the filters removed documents, dedup removed planted duplicates
    assert r["documents"] > r["kept_after_filters"] > r["kept_after_dedup"] > 0
    assert r["tokens"] > 2 * r["kept_after_dedup"]
    assert r["ratio"] > 0 and r["encode_batch_mb_s_one_core"] > 0


def test_the_check_refuses_other_documents_or_other_ids(tmp_path):
    bench = bench_module()
    tok_json = bench.train_bench_tokenizer(tmp_path / "tok", vocab=8192)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_json))
    texts = ["The first document, kept.", "A second one, also kept."]
    ids = [[1, *tok.encode(t, add_special_tokens=False).ids, 2] for t in texts]
    ours = {
        "filtered": texts,
        "deduped": texts,
        "ids": np.concatenate([np.array(x) for x in ids]),
        "lengths": np.array([len(x) for x in ids]),
    }
    theirs = {k: ours[k] for k in ("filtered", "ids", "lengths")}
    assert bench.check_identical(ours, theirs, tok_json)["kept_after_dedup"] == 2
    with pytest.raises(AssertionError, match="filters kept other documents"):
        bench.check_identical(ours, {**theirs, "filtered": texts[:1]}, tok_json)
    with pytest.raises(AssertionError, match="token ids differ"):
        bench.check_identical(ours, {**theirs, "ids": theirs["ids"] + 1}, tok_json)
    with pytest.raises(AssertionError, match="not the ones our dedup kept"):
        bench.check_identical({**ours, "deduped": [texts[0], "another text"]}, theirs, tok_json)
