"""``tokenize``: documents -> token ids with a fast (Rust) tokenizer, in
batches; the tokenizer is taken from the hub / a local path, from an
upstream tokenizer artifact, or trained here on the train split."""
from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from recipe_runner.artifacts import DATASET, TOKENIZED_DATASET, TOKENIZER, Artifact
from recipe_runner.stage import Input, Params, Stage, StageContext, StageError

from ._parallel import SHARD_LAYOUT, in_worker, map_shards, plan_dataset
from ._util import (
    NumProc, ShardStore, artifact_identity, batch_size_field, hub_offline, hub_unreachable_reason,
    load_dataset_dict, order_metrics, require_column, save_streamed, shard_size_field, stable_hash,
    with_quiet_datasets,
)


class TrainTokenizerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["bpe", "unigram"] = Field(
        "bpe", description="'bpe' (byte-level BPE, as GPT-2/Llama 3: never an unknown token) or 'unigram' (SentencePiece-style, Metaspace).")
    vocab_size: int = Field(8192, ge=64, description="Vocabulary size, special tokens included.")
    min_frequency: int = Field(2, ge=1, description="BPE: a pair must occur this often to be merged.")
    max_documents: int | None = Field(None, ge=1, description="Train on at most this many documents of the train split (default: all).")
    bos_token: str = Field("<s>", description="Beginning-of-sequence token.")
    eos_token: str = Field("</s>", description="End-of-sequence token.")
    pad_token: str = Field("<pad>", description="Padding token.")
    unk_token: str = Field("<unk>", description="Unknown token.")


class TokenizeParams(Params):
    tokenizer: str | None = Field(
        None, description=("A hub tokenizer name (e.g. 'upstage/SOLAR-10.7B-v1.0', the course's) or a local tokenizer "
                           "directory. Default: the upstream tokenizer artifact if the recipe has one, else train one "
                           "here (see 'train')."))
    revision: str | None = Field(None, description="Hub revision of 'tokenizer'.")
    train: TrainTokenizerParams = Field(
        default_factory=lambda: TrainTokenizerParams().model_dump(),  # a plain mapping, so docs show it as YAML/JSON
        validate_default=True,
        description="How to train a tokenizer on this stage's train split when neither 'tokenizer' nor an upstream one is given.")
    add_bos: bool = Field(True, description="Prepend the BOS token to every document (the course's Llama tokenizer does).")
    add_eos: bool = Field(True, description="Append the EOS token to every document (the course adds it).")
    text_column: str = Field("text", description="Column holding the text.")
    keep_text: bool = Field(False, description="Keep the text column next to input_ids (other columns are always kept).")
    num_proc: NumProc = Field(
        "auto", description=("Worker processes, each running one Rust tokenizer thread. 'auto': one per usable core "
                             "(at most 8) once the input holds 8 MiB of text; below that, this process alone with "
                             "the Rust tokenizer's own threads (unless TOKENIZERS_PARALLELISM=false)."))
    batch_size: int = batch_size_field()
    shard_size: int = shard_size_field()


# ------------------------------------------------------------ tokenizers


def load_tokenizer_from(name: str, revision: str | None, log: Any) -> Any:
    from transformers import AutoTokenizer

    local = Path(name).expanduser()
    if local.exists():
        try:
            return AutoTokenizer.from_pretrained(str(local))
        except Exception as e:  # noqa: BLE001
            raise StageError(f"cannot load a tokenizer from {local}: {type(e).__name__}: {e}") from e
    offline = hub_offline()
    reason = None if offline else hub_unreachable_reason()
    if offline or reason:
        try:
            return AutoTokenizer.from_pretrained(name, revision=revision, local_files_only=True)
        except Exception as e:  # noqa: BLE001
            why = "the hub is offline (HF_HUB_OFFLINE is set)" if offline else reason
            raise StageError(
                f"tokenizer {name!r} is not a local directory and not in the local Hugging Face cache, and {why}. "
                "Give a local tokenizer directory, or leave 'tokenizer' unset to train one here.") from e
    try:
        return AutoTokenizer.from_pretrained(name, revision=revision)
    except Exception as e:  # noqa: BLE001
        raise StageError(f"cannot load the tokenizer {name!r} from the hub: {type(e).__name__}: {e}") from e


def _text_batches(ds: Any, column: str, limit: int | None, batch_size: int = 1000) -> Any:
    seen = 0
    for batch in ds.with_format("arrow", columns=[column]).iter(batch_size=batch_size):
        texts = batch.column(0).to_pylist()
        if limit is not None and seen + len(texts) > limit:
            texts = texts[: limit - seen]
        seen += len(texts)
        yield [t for t in texts if t]
        if limit is not None and seen >= limit:
            return


def train_tokenizer(ds: Any, column: str, t: TrainTokenizerParams, add_bos: bool) -> Any:
    """Train a byte-level BPE or a Unigram tokenizer with the `tokenizers`
    trainers, fed by a batch iterator over the Arrow data."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys([t.unk_token, t.bos_token, t.eos_token, t.pad_token]))
    if t.algorithm == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=t.vocab_size, min_frequency=t.min_frequency, special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    else:
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=t.vocab_size, special_tokens=specials, unk_token=t.unk_token, show_progress=False)
    n = len(ds) if t.max_documents is None else min(len(ds), t.max_documents)
    tok.train_from_iterator(_text_batches(ds, column, t.max_documents), trainer=trainer, length=n)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=t.bos_token, eos_token=t.eos_token, pad_token=t.pad_token,
        unk_token=t.unk_token, add_bos_token=add_bos, add_eos_token=False)


# ------------------------------------------------------------ batch work

_BACKENDS: dict[str, Any] = {}


def _backend(tok_dir: str) -> Any:
    if tok_dir not in _BACKENDS:
        f = Path(tok_dir) / "tokenizer.json"
        if f.exists():
            from tokenizers import Tokenizer

            _BACKENDS[tok_dir] = ("rust", Tokenizer.from_file(str(f)))
        else:  # a tokenizer without a Rust backend (e.g. SentencePiece-only)
            from transformers import AutoTokenizer

            _BACKENDS[tok_dir] = ("hf", AutoTokenizer.from_pretrained(tok_dir))
    return _BACKENDS[tok_dir]


def encode_texts(texts: list[str], tok_dir: str) -> list[list[int]]:
    kind, tok = _backend(tok_dir)
    if kind == "rust":
        return [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]
    return tok(texts, add_special_tokens=False)["input_ids"]


def tokenize_batch(table: Any, tok_dir: str, text_column: str, bos: int | None, eos: int | None,
                   keep_text: bool) -> Any:
    """Batched map function: ``input_ids`` (int32 lists, BOS/EOS added) and
    ``num_tokens``, built as Arrow arrays from one flat numpy buffer."""
    import numpy as np
    import pyarrow as pa

    texts = table.column(text_column).combine_chunks().fill_null("").to_pylist()
    ids = encode_texts(texts, tok_dir)
    lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    extra = int(bos is not None) + int(eos is not None)
    total = int(lens.sum())
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=total)
    if extra:
        n_tok = lens + extra
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(n_tok, out=offsets[1:])
        values = np.empty(int(offsets[-1]), dtype=np.int32)
        body_start = offsets[:-1] + int(bos is not None)
        # scatter each document's ids after its BOS slot
        pos = np.repeat(body_start - np.concatenate(([0], np.cumsum(lens)[:-1])), lens) + np.arange(total)
        values[pos] = flat
        if bos is not None:
            values[offsets[:-1]] = bos
        if eos is not None:
            values[offsets[1:] - 1] = eos
    else:
        n_tok = lens
        offsets = np.concatenate(([0], np.cumsum(lens)))
        values = flat
    if offsets[-1] >= 2**31:
        raise ValueError("a batch holds more than 2**31 tokens; lower batch_size")
    input_ids = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int32()))
    cols = {name: table.column(name) for name in table.column_names
            if name != text_column or keep_text}
    cols["input_ids"] = input_ids
    cols["num_tokens"] = pa.array(n_tok.astype(np.int32), pa.int32())
    return pa.table(cols)


# ------------------------------------------------------------------ stage


class TokenizeStage(Stage):
    name = "tokenize"
    version = "1"
    description = ("Tokenize documents with a fast (Rust) tokenizer in batches, adding BOS/EOS as the course does; "
                   "the tokenizer comes from the hub or a local path, an upstream artifact, or is trained here "
                   "(byte-level BPE or Unigram).")
    Params = TokenizeParams
    inputs = {
        "dataset": Input(DATASET, description="Documents to tokenize."),
        "tokenizer": Input(TOKENIZER, optional=True, description="A tokenizer made by an earlier stage."),
    }
    outputs = {"dataset": TOKENIZED_DATASET, "tokenizer": TOKENIZER}

    @with_quiet_datasets
    def run(self, ctx: StageContext) -> dict[str, Artifact]:
        p: TokenizeParams = ctx.params  # type: ignore[assignment]
        art = ctx.input("dataset")
        dd = load_dataset_dict(art)
        require_column(dd, p.text_column, "dataset", text=True)
        upstream = ctx.inputs.get("tokenizer")

        # 1. the tokenizer (saved first: the workers load it from the output dir)
        tok_out = ctx.output_path("tokenizer")
        tok_ckpt = ctx.checkpoint_dir / "tokenizer"
        train_key = stable_hash({"train": p.train.model_dump(mode="json"), "add_bos": p.add_bos,
                                 "text_column": p.text_column, "input": artifact_identity(art)})
        if p.tokenizer:
            if upstream is not None:
                ctx.log.info("using the tokenizer %r given in params, not the upstream one", p.tokenizer)
            tok = load_tokenizer_from(p.tokenizer, p.revision, ctx.log)
            origin = p.tokenizer
        elif upstream is not None:
            tok = load_tokenizer_from(str(upstream.path), None, ctx.log)
            origin = f"upstream:{upstream.producer or upstream.path}"
        elif (tok_ckpt / "DONE").exists() and (tok_ckpt / "DONE").read_text() == train_key:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(tok_ckpt))
            origin = f"trained:{p.train.algorithm}"
            ctx.log.info("reusing the tokenizer trained before the interruption")
        else:
            if "train" not in dd:
                raise StageError("training a tokenizer needs a 'train' split in the input dataset")
            with ctx.progress(f"tokenize: training a {p.train.algorithm} tokenizer", total=None):
                tok = train_tokenizer(dd["train"], p.text_column, p.train, p.add_bos)
            tok.save_pretrained(str(tok_ckpt))
            (tok_ckpt / "DONE").write_text(train_key)
            origin = f"trained:{p.train.algorithm}"
        if p.add_bos and tok.bos_token_id is None:
            raise StageError(f"the tokenizer {origin!r} has no BOS token; set add_bos: false")
        if p.add_eos and tok.eos_token_id is None:
            raise StageError(f"the tokenizer {origin!r} has no EOS token; set add_eos: false")
        if tok.pad_token_id is None:
            if tok.eos_token is None:
                raise StageError(f"the tokenizer {origin!r} has neither a pad nor an EOS token")
            tok.pad_token = tok.eos_token
            ctx.log.info("the tokenizer has no pad token: using its EOS token %r", tok.eos_token)
        tok.save_pretrained(str(tok_out))
        tok_meta = {"vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                    "pad_token_id": tok.pad_token_id, "source": origin}

        # 2. tokenize, shard by shard
        bos = tok.bos_token_id if p.add_bos else None
        eos = tok.eos_token_id if p.add_eos else None
        tok_json = (tok_out / "tokenizer.json")
        tok_key = tok_json.read_text() if tok_json.exists() else origin
        # the shard names carry the row ranges; these parameters do not change what a shard holds
        key = {"stage": "tokenize", "v": self.version, "layout": SHARD_LAYOUT,
               "params": p.model_dump(mode="json", exclude={"num_proc", "shard_size", "batch_size"}),
               "input": artifact_identity(art), "tokenizer": tok_key}
        store = ShardStore(ctx.checkpoint_dir / "tokenize-shards", key, ctx.log)
        rust_parallel = os.environ.get("TOKENIZERS_PARALLELISM", "").lower() not in ("false", "0", "no", "off")
        plan = plan_dataset(dd, p.text_column, p.shard_size, p.num_proc)
        total_docs = plan.rows
        features = {split: _output_features(ds.features, p.text_column, p.keep_text) for split, ds in dd.items()}
        tokens: dict[str, int] = {}
        m = ctx.metrics
        with ctx.progress("tokenize", total=total_docs) as prog:
            def done(name: str, meta: dict[str, Any], rows: int) -> None:
                split = name.rsplit("-", 2)[0]
                tokens[split] = tokens.get(split, 0) + meta["tokens"]
                prog.advance(rows)

            # forked workers run one Rust thread each (set before the fork); a shard run in this
            # process turns the Rust thread pool back on (see _tokenize_shard)
            with _rust_threads(False):
                map_shards(store, plan, _tokenize_shard,
                           {"tok_dir": str(tok_out), "text_column": p.text_column, "bos": bos, "eos": eos,
                            "keep_text": p.keep_text, "batch_size": p.batch_size, "rust_parallel": rust_parallel},
                           what="tokenizing", on_done=done,
                           split_kwargs={split: {"features": f} for split, f in features.items()})
        streams = {}
        for split, ds in dd.items():
            files = [store.path(name) / "data.arrow" for name in plan.names(split)]
            streams[split] = (_template(features[split]), _shard_tables(files))
            m[f"{split}_documents"] = len(ds)
            m[f"{split}_tokens"] = tokens.get(split, 0)
        grand = sum(tokens.values())
        out = ctx.output_path("dataset")
        out_splits = save_streamed(streams, out)
        m["num_tokens"] = grand
        m["vocab_size"] = len(tok)
        m["tokenizer"] = origin
        m["shards_reused"] = store.reused
        m["shards_computed"] = store.computed
        if total_docs:
            m["tokens_per_document"] = round(grand / total_docs, 2)
        order_metrics(ctx.metrics, ['num_tokens', 'vocab_size', 'tokens_per_document', 'tokenizer'])
        ds_meta = {**tok_meta, "num_tokens": grand, "splits": {s: len(d) for s, d in out_splits.items()},
                   "add_bos": p.add_bos, "add_eos": p.add_eos}
        return {"dataset": Artifact(TOKENIZED_DATASET, out, meta=ds_meta),
                "tokenizer": Artifact(TOKENIZER, tok_out, meta=tok_meta)}


@contextlib.contextmanager
def _rust_threads(on: bool) -> Any:
    """Turn the Rust tokenizer's thread pool on or off for this block (and
    for worker processes forked in it), restoring the setting afterwards.

    On: datasets' multi-process ``map`` (earlier stages in the same run) sets
    TOKENIZERS_PARALLELISM=false in the real process environment and only
    restores Python's ``os.environ`` object, so the Rust library would stay
    single-threaded for the rest of the process (measured: CPU time equal to
    wall time).  Off: each forked worker runs one Rust thread (and the
    library does not warn about forking after its pool was used)."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if on else "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _output_features(features: Any, text_column: str, keep_text: bool) -> Any:
    from datasets import Features, List, Value

    out = {k: v for k, v in features.items() if k != text_column or keep_text}
    out["input_ids"] = List(Value("int32"))
    out["num_tokens"] = Value("int32")
    return Features(out)


def _tokenize_shard(table: Any, tmp: Path, batch_size: int, features: Any, rust_parallel: bool,
                    **kw: Any) -> dict[str, Any]:
    """One shard: ``data.arrow`` (the other columns, input_ids, num_tokens) and
    its token count.  In a worker process the Rust tokenizer runs one thread;
    in the stage's own process (one worker, one shard left, not Linux) it uses
    its thread pool unless TOKENIZERS_PARALLELISM says otherwise."""
    import pyarrow.compute as pc
    from datasets.arrow_writer import ArrowWriter

    tokens = 0
    with _rust_threads(rust_parallel and not in_worker()), \
            ArrowWriter(features=features, path=str(tmp / "data.arrow")) as w:
        for a in range(0, table.num_rows, batch_size):
            t = tokenize_batch(table.slice(a, batch_size), **kw)
            tokens += int(pc.sum(t.column("num_tokens")).as_py() or 0)
            w.write_table(t)
        w.finalize()
    return {"rows": table.num_rows, "tokens": tokens}


def _template(features: Any) -> Any:
    """An empty Dataset with the output's features (what ``save_streamed`` writes)."""
    from datasets import Dataset

    return Dataset.from_dict({k: [] for k in features}, features=features)


def _shard_tables(files: list[Path]) -> Any:
    import pyarrow as pa

    for f in files:
        with pa.memory_map(str(f)) as src:
            for batch in pa.ipc.open_stream(src):
                yield pa.Table.from_batches([batch])
