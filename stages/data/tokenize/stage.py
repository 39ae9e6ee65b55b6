"""``tokenize``: documents -> token ids with a fast (Rust) tokenizer, in
batches; the tokenizer is taken from the hub / a local path, from an
upstream tokenizer artifact, or trained here on the train split."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from recipe_runner import (
    DATASET,
    DOCUMENT_SEPARATOR,
    TOKENIZED_DATASET,
    TOKENIZER,
    Artifact,
    Facts,
    Input,
    Params,
    Stage,
    StageContext,
    StageError,
)
from recipe_runner.artifacts import VOCAB_SIZE_AT_MOST

from ...common.tokenizer_digest import TOKENIZER_DIGEST, tokenizer_digest
from ..arrow_io import save_streamed
from ..inputs import load_documents
from ..metrics import order_metrics
from ..params import Executor, NumProc, batch_size_field, executor_field, num_proc_field, shard_size_field
from ..progress_bars import with_quiet_datasets
from ..shard_store import ShardStore, artifact_identity, stable_hash
from ..shards import ShardPlan, open_shard_store, plan_dataset
from ..workers import map_shards
from .encoding import empty_dataset, output_features, rust_threads, shard_tables, tokenize_shard
from .tokenizer import TrainTokenizerParams, load_local_tokenizer, load_tokenizer_from, train_tokenizer


class TokenizeParams(Params):
    tokenizer: str | None = Field(
        None,
        description=(
            "A hub tokenizer name (e.g. 'upstage/SOLAR-10.7B-v1.0', the course's) or a local tokenizer "
            "directory. Default: the upstream tokenizer artifact if the recipe has one, else train one "
            "here (see 'train')."
        ),
    )
    revision: str | None = Field(None, description="Hub revision of 'tokenizer'.")
    train: TrainTokenizerParams = Field(
        TrainTokenizerParams.model_validate({}),
        description=(
            "How to train a tokenizer on this stage's train split when neither 'tokenizer' nor an upstream one "
            "is given."
        ),
    )
    add_bos: bool = Field(
        True, description="Prepend the BOS token to every document (the course's Llama tokenizer does)."
    )
    add_eos: bool = Field(True, description="Append the EOS token to every document (the course adds it).")
    text_column: str = Field("text", description="Column holding the text.")
    keep_text: bool = Field(
        False, description="Keep the text column next to input_ids (other columns are always kept)."
    )
    num_proc: NumProc = num_proc_field(
        description=(
            "Worker processes, each running one Rust tokenizer thread: an integer from 1, or 'auto': one per "
            "usable core (at most 8) once the input holds 8 MiB of text; below that, this process alone with "
            "the Rust tokenizer's own threads (unless TOKENIZERS_PARALLELISM=false). A run setting: it does "
            "not change the output."
        ),
    )
    batch_size: int = batch_size_field()
    shard_size: int = shard_size_field()
    executor: Executor = executor_field()


class TokenizeStage(Stage[TokenizeParams]):
    name = "tokenize"
    version = "2"  # 2: the tokenizer digest in the outputs' meta
    description = (
        "Tokenize documents with a fast (Rust) tokenizer in batches, adding BOS/EOS as the course does; "
        "the tokenizer comes from the hub or a local path, an upstream artifact, or is trained here "
        "(byte-level BPE or Unigram)."
    )
    Params = TokenizeParams
    inputs = {
        "dataset": Input(DATASET, description="Documents to tokenize."),
        "tokenizer": Input(TOKENIZER, optional=True, description="A tokenizer made by an earlier stage."),
    }
    outputs = {"dataset": TOKENIZED_DATASET, "tokenizer": TOKENIZER}

    @classmethod
    def local_inputs(cls, params: TokenizeParams) -> Mapping[str, Path]:
        """A local tokenizer directory in 'tokenizer' (a hub name is not local)."""
        local = Path(params.tokenizer).expanduser() if params.tokenizer else None
        return {"tokenizer": local} if local is not None and local.exists() else {}

    @classmethod
    def output_facts(cls, params: TokenizeParams, inputs: Mapping[str, Facts]) -> Mapping[str, Facts]:
        facts: dict[str, Facts] = {"dataset": {DOCUMENT_SEPARATOR: params.add_bos or params.add_eos}}
        if not params.tokenizer:  # trained here: at most train.vocab_size tokens (sizes a random init's estimate)
            facts["tokenizer"] = {VOCAB_SIZE_AT_MOST: params.train.vocab_size}
        return facts

    @with_quiet_datasets
    def run(self, ctx: StageContext[TokenizeParams]) -> dict[str, Artifact]:
        p = ctx.params
        art, dd = load_documents(ctx, p.text_column)
        tok_out = ctx.output_path("tokenizer")  # saved first: the workers load it from the output dir
        tok, origin = _tokenizer(ctx, dd, art)
        _check_special_tokens(tok, origin, p, ctx.log)
        tok.save_pretrained(str(tok_out))
        tok_meta = {
            "vocab_size": len(tok),
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            "source": origin,
            TOKENIZER_DIGEST: tokenizer_digest(tok),
        }
        tok_json = tok_out / "tokenizer.json"
        tok_key = tok_json.read_text() if tok_json.exists() else origin
        store = open_shard_store(ctx, "tokenize", self.version, p, art, tokenizer=tok_key)
        plan = plan_dataset(dd, p.text_column, p.shard_size, p.num_proc, executor=p.executor)
        features = {split: output_features(ds.features, p.text_column, p.keep_text) for split, ds in dd.items()}
        tokens = _tokenize_shards(ctx, store, plan, tok, tok_out, features)
        streams = {}
        m = ctx.metrics
        for split, ds in dd.items():
            files = [store.path(name) / "data.arrow" for name in plan.names(split)]
            streams[split] = (empty_dataset(features[split]), shard_tables(files))
            m[f"{split}_documents"] = len(ds)
            m[f"{split}_tokens"] = tokens.get(split, 0)
        out = ctx.output_path("dataset")
        out_splits = save_streamed(streams, out)
        grand = sum(tokens.values())
        _record_metrics(m, grand, len(tok), origin, store, plan.rows)
        ds_meta = {
            **tok_meta,
            "num_tokens": grand,
            "splits": {s: len(d) for s, d in out_splits.items()},
            "add_bos": p.add_bos,
            "add_eos": p.add_eos,
        }
        return {
            "dataset": Artifact(TOKENIZED_DATASET, out, meta=ds_meta),
            "tokenizer": Artifact(TOKENIZER, tok_out, meta=tok_meta),
        }


def _tokenizer(ctx: StageContext[TokenizeParams], dd: Any, art: Artifact) -> tuple[Any, str]:
    """``(tokenizer, where it comes from)``: the one named in params, else the
    upstream one, else one trained on the train split (kept in the
    checkpoint directory, so a re-run after a kill does not train it again)."""
    p = ctx.params
    upstream = ctx.inputs.get("tokenizer")
    if p.tokenizer:
        if upstream is not None:
            ctx.log.info("using the tokenizer %r given in params, not the upstream one", p.tokenizer)
        return load_tokenizer_from(p.tokenizer, p.revision), p.tokenizer
    if upstream is not None:
        return load_tokenizer_from(str(upstream.path), None), f"upstream:{upstream.producer or upstream.path}"
    origin = f"trained:{p.train.algorithm}"
    checkpoint = ctx.checkpoint_dir / "tokenizer"
    train_key = stable_hash(
        {
            "train": p.train.model_dump(mode="json"),
            "add_bos": p.add_bos,
            "text_column": p.text_column,
            "input": artifact_identity(art),
        }
    )
    if (checkpoint / "DONE").exists() and (checkpoint / "DONE").read_text() == train_key:
        ctx.log.info("reusing the tokenizer trained before the interruption")
        return load_local_tokenizer(checkpoint), origin
    if "train" not in dd:
        raise StageError("training a tokenizer needs a 'train' split in the input dataset")
    with ctx.progress(f"tokenize: training a {p.train.algorithm} tokenizer", total=None):
        tok = train_tokenizer(dd["train"], p.text_column, p.train, p.add_bos)
    tok.save_pretrained(str(checkpoint))
    (checkpoint / "DONE").write_text(train_key)
    return tok, origin


def _check_special_tokens(tok: Any, origin: str, p: TokenizeParams, log: Any) -> None:
    """The tokenizer has the BOS / EOS tokens asked for, and a pad token (its EOS token if it has none)."""
    if p.add_bos and tok.bos_token_id is None:
        raise StageError(f"the tokenizer {origin!r} has no BOS token; set add_bos: false")
    if p.add_eos and tok.eos_token_id is None:
        raise StageError(f"the tokenizer {origin!r} has no EOS token; set add_eos: false")
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise StageError(f"the tokenizer {origin!r} has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
        log.info("the tokenizer has no pad token: using its EOS token %r", tok.eos_token)


def _tokenize_shards(
    ctx: StageContext[TokenizeParams],
    store: ShardStore,
    plan: ShardPlan,
    tok: Any,
    tok_dir: Path,
    features: dict[str, Any],
) -> dict[str, int]:
    """Tokenize every shard not finished before; return the tokens per split."""
    p = ctx.params
    rust_parallel = os.environ.get("TOKENIZERS_PARALLELISM", "").lower() not in ("false", "0", "no", "off")
    kwargs = {
        "tok_dir": str(tok_dir),
        "text_column": p.text_column,
        "keep_text": p.keep_text,
        "bos": tok.bos_token_id if p.add_bos else None,
        "eos": tok.eos_token_id if p.add_eos else None,
        "batch_size": p.batch_size,
        "rust_parallel": rust_parallel,
    }
    tokens: dict[str, int] = {}
    with ctx.progress("tokenize", total=plan.rows) as prog:

        def done(name: str, meta: dict[str, Any], rows: int) -> None:
            split = name.rsplit("-", 2)[0]
            tokens[split] = tokens.get(split, 0) + meta["tokens"]
            prog.advance(rows)

        # forked workers run one Rust thread each (set before the fork); a shard run in this
        # process turns the Rust thread pool back on (see tokenize_shard)
        with rust_threads(False):
            map_shards(
                store,
                plan,
                tokenize_shard,
                kwargs,
                what="tokenizing",
                on_done=done,
                split_kwargs={split: {"features": f} for split, f in features.items()},
            )
    return tokens


def _record_metrics(m: dict[str, Any], grand: int, vocab: int, origin: str, store: ShardStore, docs: int) -> None:
    m["num_tokens"] = grand
    m["vocab_size"] = vocab
    m["tokenizer"] = origin
    m["shards_reused"] = store.reused
    m["shards_computed"] = store.computed
    if docs:
        m["tokens_per_document"] = round(grand / docs, 2)
    order_metrics(m, ["num_tokens", "vocab_size", "tokens_per_document", "tokenizer"])
