"""Dedup at scale: the multi-pass path (partition files on disk, memory
bounded by a budget) removes exactly the documents the in-memory path
removes, on the shipped data, the standard library and a corpus with
planted near-duplicates; its memory stays within the budget as the corpus
grows; and a killed run resumes from its finished shards."""

from __future__ import annotations

import re
import sys
import textwrap
import tracemalloc

import numpy as np
import pyarrow as pa
import pytest

from recipe_runner import Artifact
from recipe_runner.testing import run_stage
from recipe_runner_stages.data.dedup.exact import first_occurrences
from recipe_runner_stages.data.dedup.hash_shards import HashSettings, hash_shard, load_hashes, load_signatures
from recipe_runner_stages.data.dedup.multi_pass import MAX_OPEN_FILES, exact_keep_partitioned, near_keep_multi_pass
from recipe_runner_stages.data.dedup.stage import DedupParams, DedupStage, _remove_near_duplicates

#: the per-shard settings of the stage's defaults, with near-dedup on
DEFAULT_SETTINGS = {
    "text_column": "text",
    "exact": True,
    "normalize": "whitespace",
    "near": True,
    "num_perm": 128,
    "shingle": "word",
    "shingle_size": 5,
    "seed": 1,
}


def shards_of(texts, root, shard_rows=500, **settings):
    """The real per-shard pass (exact hashes, MinHash signatures) over ``texts``: the shard directories."""
    s = HashSettings(**{**DEFAULT_SETTINGS, **settings})
    dirs = []
    for a in range(0, len(texts), shard_rows):
        d = root / f"shard-{a:08d}"
        d.mkdir(parents=True)
        hash_shard(pa.table({"text": texts[a : a + shard_rows]}), d, s, 256)
        dirs.append(d)
    return dirs


def in_memory(dirs, n, threshold=0.8, verify=True, exact=True, near=True):
    """The stage's in-memory decisions (its own functions): ``(keep, near-dedup counts)``."""
    keep = first_occurrences(load_hashes(dirs)) if exact else np.ones(n, bool)
    counts = {}
    if near:
        p = DedupParams(near_duplicates=True, threshold=threshold, verify=verify)
        counts = _remove_near_duplicates(keep, *load_signatures(dirs, 128), p)
    return keep, counts


def multi_pass(dirs, n, work, budget, threshold=0.8, verify=True, exact=True, near=True):
    keep = np.ones(n, bool)
    work.mkdir(parents=True)
    parts = exact_keep_partitioned(dirs, keep, work, budget) if exact else 0
    counts = near_keep_multi_pass(dirs, keep, threshold, verify, 128, work, budget) if near else {}
    assert {f.name for f in work.iterdir()} <= {"cand-sig.npy", "cand-ids.npy"}  # the spilled files are gone
    return keep, counts, parts


def word_shingles(t: str, n: int = 5) -> set[str]:
    w = re.findall(r"\w+", t.lower())
    return {" ".join(w[i : i + n]) for i in range(max(1, len(w) - n + 1))}


def edit_words(text: str, k: int, salt: int = 0) -> str:
    w = text.split(" ")
    for i in range(k):
        j = (i * 37 + 11 + salt) % len(w)
        w[j] = w[j] + "x"
    return " ".join(w)


@pytest.fixture(scope="module")
def planted(shakespeare_paragraphs, stdlib_sources):
    """``(texts, planted near-duplicates, those at Jaccard similarity 0.93+)``:
    real paragraphs of 80+ words that are pairwise far apart, three to a
    document, and for some of
    them near copies (a chain of growing edits, one copy placed before its
    original), exact copies up to whitespace, and documents without a word
    (no shingles)."""
    docs, seen = [], []
    for p in shakespeare_paragraphs:
        s = word_shingles(p)
        if len(p.split()) >= 80 and all(len(s & o) / len(s | o) < 0.3 for o in seen):
            docs.append(p)
            seen.append(s)
    docs = ["\n\n".join(docs[i : i + 3]) for i in range(0, 300, 3)] + stdlib_sources[:20]  # 240+ words
    texts, near, sure = list(docs), [], set()
    for i in range(0, 100, 6):
        for k in (1, 2, 3):
            texts.append(edit_words(docs[i], k))
            near.append(texts[-1])
            a, b = word_shingles(texts[-1]), word_shingles(docs[i])
            if len(a & b) / len(a | b) >= 0.93:  # LSH misses 1 in 80 (b=9, r=13 at 0.8); this seed none
                sure.add(texts[-1])
    texts.insert(5, edit_words(docs[40], 1, salt=3))  # a near copy before its original: the original goes
    near.append(docs[40])
    sure.add(docs[40])
    texts += [docs[7].replace(" ", "  "), docs[9], "", "... !!!", "?"]
    return texts, near, sure


@pytest.mark.parametrize(
    ("threshold", "verify", "shingle"),
    [(0.8, True, "word"), (0.5, True, "word"), (0.9, False, "word"), (0.7, True, "char")],
)
@pytest.mark.parametrize("budget", [2**30, 4_000])  # 4 KB: 4 exact partitions, 11 per band
def test_multi_pass_near_dedup_removes_what_the_in_memory_lsh_removes(
    tmp_path, planted, threshold, verify, shingle, budget
):
    texts, near, sure = planted
    dirs = shards_of(texts, tmp_path / "s", shard_rows=64, shingle=shingle)
    want, want_counts = in_memory(dirs, len(texts), threshold, verify)
    got, counts, parts = multi_pass(dirs, len(texts), tmp_path / "w", budget, threshold, verify)
    assert (got == want).all()
    assert counts == want_counts
    assert counts["documents_without_shingles"] == (3 if shingle == "word" else 1)  # "", "... !!!", "?"
    if budget < 2**20:
        assert parts > 1
    if (threshold, verify, shingle) == (0.8, True, "word"):  # the planted ones, and only those
        removed = [t for t, k in zip(texts, got, strict=True) if not k]
        assert set(removed) - {texts[-5], texts[-4]} <= set(near)  # the two exact copies, planted copies only
        assert sure <= set(removed) and len(sure) >= 10


def test_partitioned_exact_dedup_keeps_the_first_occurrences(tmp_path, real_texts):
    rng = np.random.default_rng(0)
    texts = list(real_texts) + [real_texts[i] for i in rng.integers(0, len(real_texts), 400)]
    texts += [t.replace("\n", " \n") for t in real_texts[:50]]  # equal up to whitespace
    dirs = shards_of(texts, tmp_path / "s", shard_rows=300, near=False)
    want, _ = in_memory(dirs, len(texts), near=False)
    assert want.sum() < len(texts) - 400
    for budget in (2**30, 16_384, 512):
        got, _, parts = multi_pass(dirs, len(texts), tmp_path / f"w{budget}", budget, near=False)
        assert (got == want).all()
    assert parts > MAX_OPEN_FILES  # more partitions than files open at once: several scans


@pytest.fixture(scope="module")
def bundled(data_dir, stdlib):
    """The documents of the bundled recipes before filtering: the shipped prose
    in paragraphs and the standard library's top-level modules."""
    prose = []
    for name in ("tinyshakespeare.txt", "the-verdict.txt"):
        prose += [p.strip() for p in (data_dir / name).read_text().split("\n\n") if p.strip()]
    code = [f.read_text(encoding="utf-8", errors="replace") for f in sorted(stdlib.glob("*.py"))]
    return prose + code


@pytest.mark.parametrize(
    "params",
    [
        {"exact": True, "near_duplicates": True, "threshold": 0.8},  # clean_and_pack.yaml
        {"exact": True, "normalize": "none"},  # tinysolar_upscale.yaml
    ],
    ids=["clean_and_pack", "tinysolar_upscale"],
)
def test_the_stage_keeps_the_same_documents_either_way_on_the_bundled_data(
    tmp_path, bundled, params, save_texts, load_split
):
    art = save_texts(tmp_path / "in", bundled[:-40], bundled[-40:] + bundled[100:110])
    runs = {
        method: run_stage(
            DedupStage,
            {**params, "method": method, "max_memory_mb": 1, "shard_size": 1000, "num_proc": 1},
            inputs={"dataset": art},
            workdir=tmp_path / method,
        )
        for method in ("in_memory", "multi_pass")
    }
    a, b = (runs[m] for m in ("in_memory", "multi_pass"))
    for split in ("train", "validation"):
        assert list(load_split(a.outputs["dataset"], split)["text"]) == list(
            load_split(b.outputs["dataset"], split)["text"]
        )
    assert a.metrics == b.metrics
    assert a.metrics["exact_duplicates_removed"] >= 10
    assert not (tmp_path / "multi_pass" / "checkpoint" / "dedup-shards" / ".scratch" / "passes").exists()


def test_auto_goes_to_disk_only_past_the_memory_budget():
    p = DedupParams(near_duplicates=True, max_memory_mb=64)
    assert not p.multi_pass(10_000) and p.multi_pass(100_000)  # 1,568 bytes a document
    assert not DedupParams(max_memory_mb=64).multi_pass(1_000_000)  # exact only: 32 bytes a document
    assert DedupParams(method="multi_pass").multi_pass(10)
    assert not DedupParams(method="in_memory", max_memory_mb=1).multi_pass(10**9)


@pytest.fixture(scope="module")
def growing_corpus(tmp_path_factory, stdlib):
    """Shard directories of 16,000 real documents (30-line pieces of the
    standard library's modules): the first quarter, and all of them."""
    pieces = []
    for f in sorted(stdlib.rglob("*.py")):
        lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
        pieces += ["\n".join(lines[i : i + 30]) for i in range(0, len(lines), 30)]
        if len(pieces) >= 16_000:
            break
    assert len(pieces) >= 16_000
    dirs = shards_of(pieces[:16_000], tmp_path_factory.mktemp("growing"), shard_rows=1000)
    return dirs[:4], dirs


def traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_multi_pass_memory_stays_within_its_budget_as_the_corpus_grows(tmp_path, growing_corpus):
    small, large = growing_corpus
    budget = 1_000_000
    n_small, n_large = 4000, 16_000
    peaks = {
        n: traced_peak(lambda d=dirs, n=n: multi_pass(d, n, tmp_path / f"w{n}", budget))
        for dirs, n in ((small, n_small), (large, n_large))
    }
    in_memory_peak = traced_peak(lambda: in_memory(large, n_large))
    assert in_memory_peak > 8 * budget  # the in-memory path holds every signature: 512 bytes a document
    assert peaks[n_small] <= budget and peaks[n_large] <= budget, peaks
    assert peaks[n_large] < 1.5 * peaks[n_small], peaks  # 4 times the documents, about the same peak


RUNNER = textwrap.dedent("""
    import sys
    from recipe_runner.artifacts import Artifact
    from recipe_runner.testing import run_stage
    from recipe_runner_stages.data.dedup.stage import DedupStage
    r = run_stage(DedupStage, {"near_duplicates": True, "method": sys.argv[3], "shard_size": 150, "num_proc": 1},
                  inputs={"dataset": Artifact("dataset", sys.argv[1])}, workdir=sys.argv[2])
    print("DONE", r.metrics["shards_computed"])
""")


def test_a_killed_multi_pass_dedup_resumes_from_its_shards(
    tmp_path, bundled, save_texts, load_split, kill_after_shards
):
    art = save_texts(tmp_path / "in", bundled[-220:] * 2 + bundled[:1000])  # code first: slow shards
    script = tmp_path / "run.py"
    script.write_text(RUNNER)
    work = tmp_path / "w"
    shards = work / "checkpoint" / "dedup-shards"
    done_before, killed = kill_after_shards(
        [sys.executable, str(script), str(art.path), str(work), "multi_pass"], shards
    )
    assert done_before >= 2
    params = {"near_duplicates": True, "method": "multi_pass", "shard_size": 150, "num_proc": 1}
    r = run_stage(DedupStage, params, inputs={"dataset": Artifact("dataset", art.path)}, workdir=work)
    assert r.metrics["shards_reused"] >= done_before
    assert r.metrics["shards_reused"] + r.metrics["shards_computed"] == len(list(shards.glob("train-*")))
    if killed:
        assert r.metrics["shards_computed"] >= 1
    clean = run_stage(
        DedupStage,
        {**params, "method": "in_memory"},
        inputs={"dataset": Artifact("dataset", art.path)},
        workdir=tmp_path / "clean",
    )
    assert list(load_split(r.outputs["dataset"])["text"]) == list(load_split(clean.outputs["dataset"])["text"])
    assert r.metrics["near_duplicates_removed"] == clean.metrics["near_duplicates_removed"]
    assert not (shards / ".scratch" / "passes").exists()
