"""`recipe run` of a data recipe against the same pipeline in datatrove, end to end.

    python bench/data_vs_datatrove.py --size-mb 1
    python bench/data_vs_datatrove.py --size-mb 100 --repeats 3 --corpus-dir /tmp/dvd-corpus
    python bench/data_vs_datatrove.py --size-mb 100 --json out.json

Both pipelines read the same JSON Lines (two files), apply the Gopher
repetition then the Gopher quality rules, remove exact duplicates (first
occurrence kept) and tokenize each kept document as ``<s> ids </s>`` with the
same tokenizer.json, on 2 workers:

- ours: ``recipe run`` of a four-stage recipe (source -> filter -> dedup ->
  tokenize, ``num_proc: 2``), a fresh process and a fresh run directory each
  time, so nothing is cached;
- datatrove: its ``LocalPipelineExecutor`` (``tasks=2, workers=2``) in a fresh
  process: JsonlReader -> GopherRepetitionFilter -> GopherQualityFilter ->
  JsonlWriter (the filtered documents) -> ExactDedupSignature; then
  ExactFindDedups; then JsonlReader -> ExactDedupFilter -> DocumentTokenizer
  (unshuffled), as datatrove's own exact-dedup example chains its three blocks.

The bench asserts that both keep the same documents after the filters and
after dedup, and write the same token ids, then prints the ratio datatrove
seconds / ours (medians of ``--repeats``), the throughput in MB of text per
second per core, and the tokenizer's raw ``encode_batch`` throughput on the
same text on one core (the ceiling of any pipeline that tokenizes it).

The word splitter of the Gopher rules is the project's offline ``simple`` one
on both sides (datatrove's default is spaCy, not a dependency). The
exact-dedup blocks rank documents by ``document_priority`` (earlier file
first) so that datatrove keeps the first occurrence, as the dedup stage does.

The corpus is real text: the shipped prose (recipes/data: Tiny Shakespeare and
The Verdict, one paragraph a document), the interpreter's own documentation
files (.txt/.rst) and its standard library's .py files (one file a document),
half prose and docs, half code, repeated up to the size asked (repeats carry a
first line ``# copy N``; every 25th document is repeated a few documents later,
planted exact duplicates).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench_tokenizer import train_bench_tokenizer

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "recipes" / "data"
WORKERS = 2
PARTS = 2
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

# ---------------------------------------------------------------- corpus


def _stdlib_files(patterns: tuple[str, ...]) -> Iterator[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for pat in patterns for p in stdlib.rglob(pat))
    for p in paths:
        rel = p.relative_to(stdlib)
        if rel.parts[0] in ("site-packages", "dist-packages") or not p.is_file():
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            yield text


def _paragraphs(path: Path) -> list[str]:
    return [p for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]


def _fill(pool: list[str], budget: int) -> list[str]:
    """Documents of ``pool`` repeated (copy N > 0 marked on its first line) up to ``budget`` bytes."""
    out: list[str] = []
    size = copy = 0
    while size < budget:
        for text in pool:
            doc = f"# copy {copy}\n{text}" if copy else text
            out.append(doc)
            size += len(doc.encode())
            if size >= budget:
                break
        copy += 1
    return out


def _interleave(a: list[str], b: list[str]) -> list[str]:
    """Merge two lists keeping each one's order, spreading each evenly over the result."""
    out: list[str] = []
    i = j = 0
    while i < len(a) or j < len(b):
        if j >= len(b) or (i < len(a) and i * len(b) <= j * len(a)):
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    return out


def corpus_documents(size_mb: float) -> list[str]:
    """The documents, in order: prose and docs interleaved with code, planted duplicates."""
    target = int(size_mb * 2**20)
    prose = _paragraphs(DATA / "tinyshakespeare.txt") + _paragraphs(DATA / "the-verdict.txt")
    docs = list(_stdlib_files(("*.txt", "*.rst")))
    text = _fill(_interleave(prose, docs), target // 2)
    code = _fill(list(_stdlib_files(("*.py",))), target - sum(len(t.encode()) for t in text))
    out: list[str] = []
    for i, doc in enumerate(_interleave(text, code)):
        out.append(doc)
        if i % 25 == 24:  # an exact duplicate of an earlier document
            out.append(out[-7])
    return out


def build_corpus(dest: Path, size_mb: float) -> dict[str, Any]:
    """``dest/part-0000N.jsonl`` (documents dealt round-robin), reused when built before at this size."""
    info_file = dest / "corpus.json"
    if info_file.exists():
        info: dict[str, Any] = json.loads(info_file.read_text())
        if info.get("size_mb") == size_mb:
            return info
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    docs = corpus_documents(size_mb)
    files = [open(dest / f"part-{i:05d}.jsonl", "w", encoding="utf-8") for i in range(PARTS)]  # noqa: SIM115
    try:
        for i, doc in enumerate(docs):
            files[i % PARTS].write(json.dumps({"text": doc}) + "\n")
    finally:
        for f in files:
            f.close()
    info = {"size_mb": size_mb, "documents": len(docs), "text_bytes": sum(len(d.encode()) for d in docs)}
    info_file.write_text(json.dumps(info))
    return info


def read_corpus(corpus: Path) -> list[str]:
    """The documents in the order ``recipe run`` reads them (the part files in sorted order)."""
    texts: list[str] = []
    for f in sorted(corpus.glob("part-*.jsonl")):
        texts.extend(json.loads(line)["text"] for line in f.read_text(encoding="utf-8").splitlines())
    return texts


# ------------------------------------------------------------------ ours

RECIPE = """\
name: data-vs-datatrove
seed: 0
stages:
  - type: source
    params:
      sources:
        - {{name: corpus, path: "{corpus}", glob: "part-*.jsonl"}}
  - type: filter
    params:
      num_proc: {workers}
      filters:
        - {{type: gopher_repetition}}
        - {{type: gopher_quality}}
  - type: dedup
    params: {{exact: true, normalize: none, num_proc: {workers}}}
  - type: tokenize
    params: {{tokenizer: "{tokenizer}", num_proc: {workers}}}
"""


def run_ours(recipe: Path, runs: Path) -> tuple[float, dict[str, float]]:
    """Wall seconds of ``recipe run`` in a fresh process and run directory; and each stage's seconds."""
    shutil.rmtree(runs, ignore_errors=True)
    cmd = [sys.executable, "-m", "recipe_runner.cli", "run", str(recipe), "--workdir", str(runs)]
    s = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - s
    if proc.returncode:
        raise SystemExit(f"recipe run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    manifest = json.loads((runs / "data-vs-datatrove" / "manifest.json").read_text())
    stages = {st["name"]: float(st.get("seconds") or 0.0) for st in manifest["stages"]}
    return wall, stages


def our_outputs(runs: Path) -> dict[str, Any]:
    """The filter's and the dedup's kept texts, the tokenized ids (flat) and the documents' token counts."""
    import numpy as np
    from datasets import load_from_disk

    root = runs / "data-vs-datatrove" / "stages"

    def out(stage: str) -> Any:
        (d,) = root.glob(f"{stage}-*")
        return load_from_disk(str(d / "outputs" / "dataset"))["train"].with_format("arrow")[:]

    ids = out("tokenize").column("input_ids").combine_chunks()
    return {
        "filtered": out("filter").column("text").to_pylist(),
        "deduped": out("dedup").column("text").to_pylist(),
        "ids": np.asarray(ids.flatten().to_numpy(), dtype=np.int64),
        "lengths": np.diff(np.asarray(ids.offsets.to_numpy(), dtype=np.int64)),
    }


# ------------------------------------------------------------- datatrove


def run_datatrove(corpus: Path, tok_json: Path, out: Path) -> float:
    """Wall seconds of datatrove's three executors in a fresh process (this file, ``--datatrove-run``)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, __file__, "--datatrove-run", str(corpus), str(tok_json), str(out)]
    s = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - s
    if proc.returncode:
        raise SystemExit(f"datatrove failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall


def _text(doc: Any) -> bytes:
    """What datatrove's exact dedup hashes: the raw text (the stage's ``normalize: none``), bytes for xxhash."""
    return str(doc.text).encode("utf-8")


def _earlier_file_first(doc: Any) -> int:
    """datatrove keeps the duplicate of highest priority: the earliest part file (ids are 'file/line')."""
    return 65535 - int(str(doc.id).split("part-", 1)[1][:5])


def datatrove_pipeline(corpus: str, tok_json: str, out: str) -> None:
    """The pipeline, with datatrove's blocks and executor (runs in the ``--datatrove-run`` process)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import ExactDedupFilter, ExactDedupSignature, ExactFindDedups
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from datatrove.pipeline.writers import JsonlWriter
    from tokenizers.processors import TemplateProcessing

    from recipe_runner_stages.data.filter.datatrove_rules import word_tokenizer

    wt = word_tokenizer("simple")
    config = ExactDedupConfig(content_getter=_text, document_priority=_earlier_file_first)
    o = Path(out)
    kw: dict[str, Any] = {"tasks": WORKERS, "workers": WORKERS}
    filtered = LocalPipelineExecutor(
        pipeline=[
            JsonlReader(corpus, glob_pattern="part-*.jsonl"),
            GopherRepetitionFilter(language=wt),
            GopherQualityFilter(language=wt),
            JsonlWriter(str(o / "filtered"), compression=None),
            ExactDedupSignature(output_folder=str(o / "sigs"), config=config, finder_workers=WORKERS),
        ],
        logging_dir=str(o / "logs" / "1"),
        **kw,
    )
    find = LocalPipelineExecutor(
        pipeline=[ExactFindDedups(data_folder=str(o / "sigs"), output_folder=str(o / "dups"), config=config)],
        logging_dir=str(o / "logs" / "2"),
        depends=filtered,
        **kw,
    )
    tokenizer = DocumentTokenizer(
        output_folder=str(o / "tokens"), tokenizer_name_or_path=tok_json, shuffle_documents=False
    )
    tokenizer.post_processor = TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    LocalPipelineExecutor(
        pipeline=[
            JsonlReader(str(o / "filtered"), glob_pattern="*.jsonl"),
            ExactDedupFilter(data_folder=str(o / "dups"), config=config),
            tokenizer,
        ],
        logging_dir=str(o / "logs" / "3"),
        depends=find,
        **kw,
    ).run()


def datatrove_outputs(out: Path) -> dict[str, Any]:
    """The filtered texts (rank 0's file, then rank 1's: the corpus order) and the tokens, as :func:`our_outputs`."""
    import numpy as np

    filtered: list[str] = []
    for f in sorted((out / "filtered").glob("*.jsonl")):
        filtered.extend(json.loads(line)["text"] for line in f.read_text(encoding="utf-8").splitlines())
    ids, lengths = [], []
    for f in sorted((out / "tokens").glob("*_unshuffled.ds")):
        ids.append(np.fromfile(f, dtype="<u2").astype(np.int64))
        ends = np.fromfile(f"{f}.index", dtype="<u8").astype(np.int64)
        lengths.append(np.diff(np.concatenate(([0], ends))))
    return {"filtered": filtered, "ids": np.concatenate(ids), "lengths": np.concatenate(lengths)}


# ----------------------------------------------------------------- checks


def check_identical(ours: dict[str, Any], theirs: dict[str, Any], tok_json: Path) -> dict[str, int]:
    """Assert the same documents kept by the filters and by dedup, and the same token ids; return the counts."""
    import numpy as np
    from tokenizers import Tokenizer

    assert ours["filtered"] == theirs["filtered"], (
        f"the filters kept other documents: ours {len(ours['filtered'])}, datatrove {len(theirs['filtered'])}"
    )
    assert np.array_equal(ours["lengths"], theirs["lengths"]), (
        f"other documents after dedup or other token counts: ours {len(ours['lengths'])} documents, "
        f"datatrove {len(theirs['lengths'])}"
    )
    assert np.array_equal(ours["ids"], theirs["ids"]), "the token ids differ"
    # byte-level BPE is lossless: datatrove's ids decode to exactly the documents our dedup kept
    ends = np.cumsum(theirs["lengths"])
    docs = [theirs["ids"][a + 1 : b - 1].tolist() for a, b in zip(ends - theirs["lengths"], ends, strict=True)]
    decoded = Tokenizer.from_file(str(tok_json)).decode_batch(docs, skip_special_tokens=False)
    assert decoded == ours["deduped"], "datatrove's tokenized documents are not the ones our dedup kept"
    return {
        "kept_after_filters": len(ours["filtered"]),
        "kept_after_dedup": len(ours["deduped"]),
        "tokens": int(len(ours["ids"])),
    }


def encode_ceiling(texts: list[str], tok_json: Path, max_bytes: int = 16 * 2**20) -> float:
    """MB/s of the tokenizer's own ``encode_batch`` on one core, on (up to ``max_bytes`` of) the corpus text."""
    sample, size = [], 0
    for t in texts:
        sample.append(t)
        size += len(t.encode())
        if size >= max_bytes:
            break
    code = (
        "import sys, time, json; from tokenizers import Tokenizer\n"
        "tok = Tokenizer.from_file(sys.argv[1]); texts = json.load(sys.stdin)\n"
        "s = time.perf_counter()\n"
        "for a in range(0, len(texts), 1000): tok.encode_batch(texts[a : a + 1000])\n"
        "print(time.perf_counter() - s)\n"
    )
    env = dict(_env(), TOKENIZERS_PARALLELISM="false", RAYON_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tok_json)], input=json.dumps(sample), env=env, capture_output=True, text=True
    )
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return size / 2**20 / float(proc.stdout.strip())


# ------------------------------------------------------------------ main


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    return {**env, **OFFLINE}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    corpus_dir = Path(args.corpus_dir) if args.corpus_dir else work / "corpus"
    corpus = corpus_dir / f"{args.size_mb:g}MB"
    info = build_corpus(corpus, args.size_mb)
    mb = info["text_bytes"] / 2**20
    print(f"corpus: {info['documents']} documents, {mb:.2f} MB of text, in {corpus}", flush=True)
    tok_json = train_bench_tokenizer(work / "tokenizer", vocab=8192)
    recipe = work / "recipe.yaml"
    recipe.write_text(RECIPE.format(corpus=corpus, tokenizer=tok_json.parent, workers=WORKERS))
    runs: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for i in range(args.repeats):
        load = _load()
        ours, stages = run_ours(recipe, work / "runs")
        dt = run_datatrove(corpus, tok_json, work / "datatrove")
        runs.append({"ours_s": ours, "datatrove_s": dt, "stages_s": stages, "load_before": load, "load_after": _load()})
        print(
            f"run {i + 1}: recipe run {ours:.2f} s (stages {_stages(stages)}), datatrove {dt:.2f} s, "
            f"ratio {dt / ours:.2f}x, load {load} -> {_load()}",
            flush=True,
        )
        if i == 0:  # the outputs are the same every time; check them once
            counts = check_identical(our_outputs(work / "runs"), datatrove_outputs(work / "datatrove"), tok_json)
            print(f"identical: {counts}", flush=True)
    ours_med = statistics.median(r["ours_s"] for r in runs)
    dt_med = statistics.median(r["datatrove_s"] for r in runs)
    ceiling = encode_ceiling(read_corpus(corpus), tok_json)
    result = {
        "size_mb": mb,
        "documents": info["documents"],
        **counts,
        "workers": WORKERS,
        "cpus": os.cpu_count(),
        "runs": runs,
        "ours_median_s": ours_med,
        "datatrove_median_s": dt_med,
        "ratio": dt_med / ours_med,
        "ours_mb_s_per_core": mb / ours_med / WORKERS,
        "datatrove_mb_s_per_core": mb / dt_med / WORKERS,
        "encode_batch_mb_s_one_core": ceiling,
    }
    print(
        f"\n{mb:.1f} MB, medians of {len(runs)}: recipe run {ours_med:.2f} s, datatrove {dt_med:.2f} s: "
        f"{result['ratio']:.2f}x datatrove.\nthroughput per core: ours {result['ours_mb_s_per_core']:.2f} MB/s, "
        f"datatrove {result['datatrove_mb_s_per_core']:.2f} MB/s; the tokenizer's encode_batch alone "
        f"{ceiling:.2f} MB/s on one core (the ceiling)",
        flush=True,
    )
    return result


def _stages(stages: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.1f}" for k, v in stages.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=1.0, help="corpus size in MB of text (default 1)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each (the medians are reported)")
    ap.add_argument("--corpus-dir", default=None, help="build (or reuse) the corpus here (default: in the workdir)")
    ap.add_argument("--workdir", default=None, help="outputs here (default: a temporary directory, removed)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--datatrove-run", nargs=3, metavar=("CORPUS", "TOKENIZER_JSON", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.datatrove_run:
        from loguru import logger

        logger.remove()  # datatrove's per-task banners and stats
        logger.add(sys.stderr, level="WARNING")
        datatrove_pipeline(*args.datatrove_run)
        return 0
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="data-vs-datatrove-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = measure(args, work)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return 0
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
