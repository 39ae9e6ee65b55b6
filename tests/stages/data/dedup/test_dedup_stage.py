"""The dedup stage removes the planted exact and near duplicates, across
splits, and nothing else."""

from __future__ import annotations

import re

import pytest

from recipe_runner.testing import run_stage
from recipe_runner_stages.data.dedup.stage import DedupStage


def word_shingles(t: str, n: int = 5) -> set[str]:
    w = re.findall(r"\w+", t.lower())
    return {" ".join(w[i : i + n]) for i in range(max(1, len(w) - n + 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


@pytest.fixture(scope="module")
def distinct_docs(shakespeare_paragraphs) -> list[str]:
    """Real paragraphs of 40+ words that are pairwise far apart (checked)."""
    docs = []
    shingles = []
    for p in shakespeare_paragraphs:
        if len(p.split()) < 40:
            continue
        s = word_shingles(p)
        if all(jaccard(s, o) < 0.3 for o in shingles):
            docs.append(p)
            shingles.append(s)
        if len(docs) == 240:
            break
    return docs


def edit_words(text: str, k: int) -> str:
    w = text.split(" ")
    for i in range(k):
        j = (i * 37 + 11) % len(w)
        w[j] = w[j] + "x"
    return " ".join(w)


def test_planted_exact_and_near_duplicates_and_nothing_else(tmp_path, distinct_docs, save_texts, load_split):
    train = list(distinct_docs[:200])
    val = list(distinct_docs[200:])
    exact_ws = train[3].replace(" ", "  ").replace("\n", " \n")  # same text up to whitespace
    a, b = sorted(range(len(train)), key=lambda i: -len(train[i].split()))[:2]  # long ones: one edit is small
    near = edit_words(train[a], 1)
    near_cluster = [edit_words(train[b], 1), edit_words(train[b], 2)]
    for d, orig in [(near, train[a])] + [(d, train[b]) for d in near_cluster]:
        assert 0.85 < jaccard(word_shingles(d), word_shingles(orig)) < 1
    train_in = train + [exact_ws, near] + near_cluster
    val_in = val + [train[30]]  # a validation document that repeats a training one
    art = save_texts(tmp_path / "in", train_in, val_in)
    r = run_stage(
        DedupStage, {"near_duplicates": True, "shard_size": 64}, inputs={"dataset": art}, workdir=tmp_path / "w"
    )
    m = r.metrics
    assert list(load_split(r.outputs["dataset"])["text"]) == train
    assert list(load_split(r.outputs["dataset"], "validation")["text"]) == val
    assert m["exact_duplicates_removed"] == 2  # the whitespace variant and the validation copy
    assert m["near_duplicates_removed"] == 3
    assert m["near_duplicate_clusters"] == 2
    assert m["validation_documents_out"] == len(val)


def test_exact_only_with_no_normalization_is_the_courses_set_dedup(
    tmp_path, shakespeare_paragraphs, save_texts, load_split
):
    docs = shakespeare_paragraphs[:400]
    texts = docs + docs[:50] + [d + " " for d in docs[50:60]]  # trailing space: different text for the course

    def course(ds):  # the notebook's deduplication, on a list
        unique_text = set()
        out = []
        for x in ds:
            if x in unique_text:
                continue
            unique_text.add(x)
            out.append(x)
        return out

    art = save_texts(tmp_path / "in", texts)
    r = run_stage(DedupStage, {"normalize": "none"}, inputs={"dataset": art}, workdir=tmp_path / "w")
    assert list(load_split(r.outputs["dataset"])["text"]) == course(texts)
    r2 = run_stage(DedupStage, {"normalize": "whitespace"}, inputs={"dataset": art}, workdir=tmp_path / "w2")
    assert r2.metrics["exact_duplicates_removed"] == r.metrics["exact_duplicates_removed"] + 10


def test_params_reject_doing_nothing():
    from pydantic import ValidationError

    from recipe_runner_stages.data.dedup.stage import DedupParams

    with pytest.raises(ValidationError):
        DedupParams(exact=False, near_duplicates=False)
