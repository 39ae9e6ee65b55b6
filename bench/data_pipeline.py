"""The data stages against the course's notebook way, on the same corpus.

    python bench/data_pipeline.py --mb 50          # the reference measurement (several minutes on 2 cores)
    python bench/data_pipeline.py                  # quick check (8 MB)
    python bench/data_pipeline.py --mb 50 --datatrove --json out.json

The corpus is real text replicated to ``--mb`` megabytes: half "web"
documents (tinyshakespeare's paragraphs, one document each, as the project's
recipes read it, stored as JSON Lines like the course's hub dataset) and half
source code (the Python standard library's own .py files, one document per
file, as the course builds its python-code dataset).  Every replica gets a first line
``# copy N`` so replicas are distinct documents and every step works on the
full volume.

Both pipelines do the course's steps (lesson 2 and 3 of "Pretraining LLMs"):

  load -> paragraph_length -> paragraph_repetition -> exact dedup ->
  English (fastText, score > 0.4) -> tokenize (BOS + ids + EOS) ->
  pack (concatenate, cut rows of --seq-len, drop the remainder, parquet)

"notebook" is the course's code: per-example ``datasets.filter``/``map``
with the course's functions, the course's tokenization function
(``tokenizer.tokenize`` + ``convert_tokens_to_ids`` per example; transformers
5 has no separate slow class for this tokenizer, ``use_fast=False`` returns
the same backend, so the per-example Python path is what is slow), packing
through Python lists.  "stages" runs source, filter, dedup, filter, tokenize
and pack through ``recipe_runner.testing.run_stage``.  Both use the same
BPE tokenizer (trained once beforehand, not timed) and the lid.176 lite
fastText model.  The bench asserts that both keep the same documents and
produce the same packed ids.

``--datatrove`` also times the Gopher quality + repetition rules run by
datatrove's own LocalPipelineExecutor (JSONL in, JSONL out) against the
filter stage running the same datatrove rules.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_tokenizer import train_bench_tokenizer

from recipe_runner_stages.data.course_reference import (  # the course's filters, verbatim
    paragraph_length_filter,
    paragraph_repetition_filter,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "recipes" / "data"


# ---------------------------------------------------------------- clocks


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (worker pools)."""
    import resource

    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


class Clock:
    """Wall and CPU seconds per named step."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._name, self._w, self._c = "", 0.0, 0.0

    def start(self, name: str) -> None:
        self._name, self._w, self._c = name, time.perf_counter(), cpu_seconds()

    def stop(self) -> None:
        self.wall[self._name] = time.perf_counter() - self._w
        self.cpu[self._name] = cpu_seconds() - self._c


# ---------------------------------------------------------------- corpus


def build_corpus(dest: Path, mb: float) -> dict:
    """Write the corpus under ``dest``: web.jsonl and code/<copy>/<path>.py."""
    target = int(mb * 2**20)
    half = target // 2
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "code").mkdir(parents=True)
    pieces = [p for p in (DATA / "tinyshakespeare.txt").read_text().split("\n\n") if p.strip()]
    web_bytes = web_docs = 0
    with open(dest / "web.jsonl", "w") as f:
        copy = 0
        while web_bytes < half:
            for piece in pieces:
                text = f"# copy {copy}\n{piece}" if copy else piece
                f.write(json.dumps({"text": text}) + "\n")
                web_bytes += len(text.encode())
                web_docs += 1
                if web_bytes >= half:
                    break
            copy += 1
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for p in sorted(stdlib.rglob("*.py")):
        rel = p.relative_to(stdlib)
        if rel.parts[0] in ("site-packages", "dist-packages"):
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            files.append((rel, text))
    code_bytes = code_docs = 0
    copy = 0
    while code_bytes < target - web_bytes:
        for rel, text in files:
            out = dest / "code" / f"{copy:03d}" / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            body = f"# copy {copy}\n{text}" if copy else text
            out.write_text(body, encoding="utf-8")
            code_bytes += len(body.encode())
            code_docs += 1
            if code_bytes >= target - web_bytes:
                break
        copy += 1
    return {"web_docs": web_docs, "web_mb": web_bytes / 2**20, "code_docs": code_docs, "code_mb": code_bytes / 2**20}


# ------------------------------------------------- the course's notebook way
# Lesson 2 (data preparation) and lesson 3 (packing) of "Pretraining LLMs",
# verbatim except: paths, the language model file, len() on the duplicate
# list (the course divides the list itself), score[0] for the fastText
# score (a tuple in fasttext-predict), and no num_proc=1 in the two
# filters that close over state: datasets 5 starts a worker process for
# num_proc=1, which cannot pickle the fastText model (in the datasets the
# course used, num_proc=1 ran in-process, as it does here).


def deduplication(ds):
    def dedup_func(x):
        """Use this function to remove duplicate entries"""
        if x["text"] in unique_text:
            return False
        else:
            unique_text.add(x["text"])
            return True

    unique_text = set()
    ds = ds.filter(dedup_func, load_from_cache_file=False)  # course: num_proc=1 (see below)
    return ds


def english_language_filter(ds, model_path):
    from fasttext.FastText import _FastText

    model = _FastText(model_path)

    def is_english(x):
        # Predict language of the text and probability
        language, score = model.predict(x["text"].replace("\n", ""))
        language = language[0].split("__")[2]
        # the course's fasttext returned a numpy array here (score > 0.4 compared its one element);
        # fasttext-predict returns a tuple, hence score[0]
        return score[0] > 0.4 and language == "en"  # change code here if building a model in another language

    ds = ds.filter(is_english, load_from_cache_file=False)  # course: num_proc=1 (see below)
    return ds


def notebook_way(corpus: Path, tok_dir: Path, seq_len: int, out: Path, lid_model: str) -> tuple[Clock, dict]:
    import datasets
    import numpy as np
    from transformers import AutoTokenizer

    datasets.disable_caching()
    t = Clock()
    t.start("load")
    pretraining_dataset = datasets.load_dataset(
        "json", data_files=str(corpus / "web.jsonl"), split="train", cache_dir=str(out / "hf-cache")
    )
    pretraining_dataset = pretraining_dataset.select_columns(["text"])
    code_dataset = []
    for file in sorted(str(p) for p in (corpus / "code").rglob("*.py")):
        code_dataset.append({"text": open(file).read()})  # noqa: SIM115 - the course's code, verbatim
    code_dataset = datasets.Dataset.from_list(code_dataset)
    dataset = datasets.concatenate_datasets([pretraining_dataset, code_dataset])
    t.stop()

    t.start("paragraph_length")
    dataset = dataset.filter(paragraph_length_filter, load_from_cache_file=False)
    t.stop()
    t.start("paragraph_repetition")
    dataset = dataset.filter(paragraph_repetition_filter, load_from_cache_file=False)
    t.stop()
    t.start("dedup")
    dataset = deduplication(dataset)
    t.stop()
    t.start("language")
    dataset = english_language_filter(dataset, lid_model)
    t.stop()
    kept_texts = dataset["text"]

    t.start("tokenize")
    tokenizer: Any = AutoTokenizer.from_pretrained(str(tok_dir), use_fast=False)

    def tokenization(example):
        # Tokenize
        tokens = tokenizer.tokenize(example["text"])
        # Convert tokens to ids
        token_ids = tokenizer.convert_tokens_to_ids(tokens)
        # Add <bos>, <eos> tokens to the front and back of tokens_ids
        # bos: begin of sequence, eos: end of sequence
        token_ids = [tokenizer.bos_token_id] + token_ids + [tokenizer.eos_token_id]
        example["input_ids"] = token_ids
        # We will be using this column to count the total number of tokens
        # in the final dataset
        example["num_tokens"] = len(token_ids)
        return example

    dataset = dataset.map(tokenization, load_from_cache_file=False)
    num_tokens = int(np.sum(dataset["num_tokens"]))
    t.stop()

    t.start("pack")
    input_ids = np.concatenate(dataset["input_ids"])
    max_seq_length = seq_len
    total_length = len(input_ids) - len(input_ids) % max_seq_length
    input_ids = input_ids[:total_length]
    input_ids_reshaped = input_ids.reshape(-1, max_seq_length).astype(np.int32)
    input_ids_list = input_ids_reshaped.tolist()
    packaged_pretrain_dataset = datasets.Dataset.from_dict({"input_ids": input_ids_list})
    packaged_pretrain_dataset.to_parquet(str(out / "packaged_pretrain_dataset.parquet"))
    t.stop()
    return t, {"texts": kept_texts, "packed": input_ids_reshaped, "num_tokens": num_tokens}


# ------------------------------------------------------------ the stages


def stages_way(corpus: Path, tok_dir: Path, seq_len: int, out: Path, num_proc: str | int) -> tuple[Clock, dict, dict]:
    from datasets import load_from_disk

    from recipe_runner.testing import run_stage
    from recipe_runner_stages.data.dedup.stage import DedupStage
    from recipe_runner_stages.data.filter.stage import FilterStage
    from recipe_runner_stages.data.pack.stage import PackStage
    from recipe_runner_stages.data.source.stage import SourceStage
    from recipe_runner_stages.data.tokenize.stage import TokenizeStage

    t = Clock()
    metrics: dict[str, dict] = {}

    def step(name, cls, params, inputs=None):
        t.start(name)
        r = run_stage(cls, params, inputs=inputs or {}, workdir=out / name, seed=0)
        t.stop()
        metrics[name] = r.metrics
        return r.outputs

    src = step(
        "load",
        SourceStage,
        {
            "sources": [
                {"path": str(corpus / "web.jsonl")},
                {"path": str(corpus / "code"), "glob": "**/*.py"},
            ]
        },
    )
    f1 = step(
        "course_filters",
        FilterStage,
        {"num_proc": num_proc, "filters": [{"type": "paragraph_length"}, {"type": "paragraph_repetition"}]},
        {"dataset": src["dataset"]},
    )
    dd = step("dedup", DedupStage, {"normalize": "none", "num_proc": num_proc}, {"dataset": f1["dataset"]})
    f2 = step(
        "language",
        FilterStage,
        {
            "num_proc": num_proc,
            "filters": [{"type": "language", "languages": ["en"], "min_score": 0.4, "join_lines_with": ""}],
        },
        {"dataset": dd["dataset"]},
    )
    tk = step("tokenize", TokenizeStage, {"tokenizer": str(tok_dir)}, {"dataset": f2["dataset"]})
    pk = step(
        "pack",
        PackStage,
        {"mode": "concat", "max_seq_length": seq_len, "export_parquet": True},
        {"dataset": tk["dataset"]},
    )
    kept = load_from_disk(str(f2["dataset"].path))["train"]["text"]
    table = load_from_disk(str(pk["dataset"].path))["train"].with_format("arrow")[:]
    packed = table.column("input_ids").combine_chunks().flatten().to_numpy().reshape(len(table), -1)
    return t, {"texts": kept, "packed": packed, "num_tokens": metrics["tokenize"]["num_tokens"]}, metrics


# ------------------------------------------------------------- datatrove


def _dt_reader(src: str):
    def read(data, rank: int = 0, world_size: int = 1):
        from datatrove.data import Document

        with open(f"{src}/part{rank}.jsonl") as f:
            for i, line in enumerate(f):
                yield Document(text=json.loads(line)["text"], id=f"{rank}/{i}")

    return read


def _dt_counter(dest: str):
    def count(data, rank: int = 0, world_size: int = 1):
        n = 0
        for _doc in data:
            n += 1
        Path(f"{dest}/kept{rank}.txt").write_text(str(n))
        return
        yield

    return count


def datatrove_way(corpus: Path, out: Path, tasks: int) -> tuple[float, int]:
    """datatrove's executor running its Gopher filters (JSON Lines in, a count out;
    datatrove's own JSONL reader/writer need orjson, which is not a dependency)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter

    from recipe_runner_stages.data.filter.datatrove_rules import word_tokenizer

    wt = word_tokenizer("simple")
    src = out / "dt-in"
    dest = out / "dt-out"
    src.mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    lines = (corpus / "web.jsonl").read_text().splitlines()
    per = -(-len(lines) // tasks)
    for i in range(tasks):
        (src / f"part{i}.jsonl").write_text("\n".join(lines[i * per : (i + 1) * per]) + "\n")
    from loguru import logger

    logger.remove()  # datatrove's per-task stats banners
    logger.add(sys.stderr, level="WARNING")
    s = time.perf_counter()
    LocalPipelineExecutor(
        pipeline=[
            _dt_reader(str(src)),
            GopherQualityFilter(language=wt),
            GopherRepetitionFilter(language=wt),
            _dt_counter(str(dest)),
        ],
        tasks=tasks,
        workers=tasks,
        logging_dir=str(out / "dt-logs"),
    ).run()
    elapsed = time.perf_counter() - s
    kept = sum(int(p.read_text()) for p in dest.glob("kept*.txt"))
    return elapsed, kept


def datatrove_vs_stage(corpus: Path, out: Path, num_proc: str | int, tasks: int) -> dict:
    from recipe_runner.testing import run_stage
    from recipe_runner_stages.data.filter.stage import FilterStage
    from recipe_runner_stages.data.source.stage import SourceStage

    src = run_stage(SourceStage, {"sources": [{"path": str(corpus / "web.jsonl")}]}, workdir=out / "dt-src")
    s = time.perf_counter()
    r = run_stage(
        FilterStage,
        {"num_proc": num_proc, "filters": [{"type": "gopher_quality"}, {"type": "gopher_repetition"}]},
        inputs={"dataset": src.outputs["dataset"]},
        workdir=out / "dt-stage",
    )
    ours = time.perf_counter() - s
    dt, dt_kept = datatrove_way(corpus, out, tasks)
    assert dt_kept == r.metrics["documents_out"], (dt_kept, r.metrics["documents_out"])
    return {"datatrove_s": dt, "stage_s": ours, "kept": dt_kept, "ratio": dt / ours}


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--mb", type=float, default=8.0, help="corpus size in MB (default 8: a quick check; the reference run uses 50)"
    )
    ap.add_argument("--seq-len", type=int, default=128, help="packed row length")
    ap.add_argument("--vocab", type=int, default=8192, help="vocabulary of the bench tokenizer")
    ap.add_argument("--num-proc", default="auto", help="num_proc for the stages ('auto' or an integer)")
    ap.add_argument(
        "--workdir", default=None, help="where to build the corpus and outputs (default: a temp dir, removed)"
    )
    ap.add_argument(
        "--datatrove", action="store_true", help="also compare with datatrove's executor on the Gopher rules"
    )
    ap.add_argument("--json", default=None, help="write the timings here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("datasets", "recipe_runner"):
        logging.getLogger(name).setLevel(logging.ERROR)
    num_proc = args.num_proc if args.num_proc == "auto" else int(args.num_proc)

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="data-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        corpus = work / "corpus"
        info = build_corpus(corpus, args.mb)
        print(
            f"corpus: {info['web_docs']} web documents ({info['web_mb']:.1f} MB) + {info['code_docs']} "
            f"python files ({info['code_mb']:.1f} MB); {os.cpu_count()} CPUs",
            flush=True,
        )
        tok_dir = work / "tokenizer"
        train_bench_tokenizer(tok_dir, args.vocab, add_bos_token=True)
        from recipe_runner_stages.data.filter.language import shipped_langid_model

        lid = shipped_langid_model()

        print("running the notebook way ...", flush=True)
        nb_t, nb = notebook_way(corpus, tok_dir, args.seq_len, work / "notebook", lid)
        print("running the stages ...", flush=True)
        st_t, st, st_metrics = stages_way(corpus, tok_dir, args.seq_len, work / "stages", num_proc)

        # identical results where the logic is the same
        assert list(nb["texts"]) == list(st["texts"]), "the stages kept other documents than the notebook"
        assert nb["num_tokens"] == st["num_tokens"], (nb["num_tokens"], st["num_tokens"])
        assert nb["packed"].shape == st["packed"].shape and (nb["packed"] == st["packed"]).all(), "packed ids differ"

        steps = [
            ("load", ["load"], "load"),
            ("course filters", ["paragraph_length", "paragraph_repetition"], "course_filters"),
            ("exact dedup", ["dedup"], "dedup"),
            ("language ID", ["language"], "language"),
            ("tokenize", ["tokenize"], "tokenize"),
            ("pack", ["pack"], "pack"),
        ]
        rows: list[tuple[str, float, float, float, float]] = []
        for label, keys, st_key in steps:
            rows.append(
                (
                    label,
                    sum(nb_t.wall[k] for k in keys),
                    st_t.wall[st_key],
                    sum(nb_t.cpu[k] for k in keys),
                    st_t.cpu[st_key],
                )
            )
        tot = (sum(r[1] for r in rows), sum(r[2] for r in rows), sum(r[3] for r in rows), sum(r[4] for r in rows))
        print(
            f"\n{'step':<16}{'notebook s':>12}{'stages s':>10}{'speed-up':>10}"
            f"{'notebook cpu-s':>16}{'stages cpu-s':>14}"
        )
        for label, a, b, ca, cb in [*rows, ("end to end", *tot)]:
            print(f"{label:<16}{a:>12.2f}{b:>10.2f}{a / b:>9.1f}x{ca:>16.2f}{cb:>14.2f}")
        load = os.getloadavg()
        print(
            f"\nsame {len(st['texts'])} documents kept, same {st['packed'].shape[0]} packed rows of "
            f"{args.seq_len} ids ({st['num_tokens']} tokens): identical.  Load average at the end: "
            f"{load[0]:.1f} on {os.cpu_count()} CPUs (other work on the machine slows both ways)."
        )
        result = {
            "mb": args.mb,
            "corpus": info,
            "cpus": os.cpu_count(),
            "loadavg": load,
            "steps": {
                label: {"notebook_s": a, "stages_s": b, "speedup": a / b, "notebook_cpu_s": ca, "stages_cpu_s": cb}
                for label, a, b, ca, cb in rows
            },
            "end_to_end": {
                "notebook_s": tot[0],
                "stages_s": tot[1],
                "speedup": tot[0] / tot[1],
                "notebook_cpu_s": tot[2],
                "stages_cpu_s": tot[3],
            },
            "documents_kept": len(st["texts"]),
            "packed_rows": int(st["packed"].shape[0]),
            "num_tokens": st["num_tokens"],
        }
        if args.datatrove:
            print("\ndatatrove's executor vs the filter stage (Gopher quality + repetition, web part) ...", flush=True)
            dt = datatrove_vs_stage(corpus, work / "dt", num_proc, tasks=max(1, min(os.cpu_count() or 1, 8)))
            print(
                f"datatrove {dt['datatrove_s']:.2f}s, filter stage {dt['stage_s']:.2f}s "
                f"({dt['ratio']:.1f}x), same {dt['kept']} documents kept"
            )
            result["datatrove"] = dt
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return 0
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
