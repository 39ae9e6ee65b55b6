"""The eval stage's held-out perplexity: the held-out split of the dataset
input, fixed-length blocks built from a text dataset (documents tokenized,
joined with EOS, cut into blocks) or a tokenized dataset (packed datasets
keep their rows), scored by the shared ``common/perplexity.py``."""

from __future__ import annotations

from typing import Any

from recipe_runner import DATASET, TOKENIZED_DATASET, Artifact, StageContext, StageError

from ..common.datasets import describe_input, load_dataset_dict, pick_split
from ..common.perplexity import perplexity
from .params import EvalParams

#: the longest block a text or tokenized dataset is cut into by default
MAX_DEFAULT_BLOCK = 1024

DEFINITION = "exp(sum of token cross-entropy / predicted tokens)"


def heldout_perplexity(
    ctx: StageContext[EvalParams], model: Any, tokenizer: Any, art: Artifact
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(flat metrics, report section) of the model's perplexity on the
    held-out rows of ``art``."""
    p = ctx.params
    split, rows = heldout_rows(art, p, tokenizer, getattr(model.config, "max_position_embeddings", None))
    with ctx.progress("perplexity", total=len(rows)) as bar:
        ppl = perplexity(model, rows, p.batch_size, bar.advance).as_dict()
    ctx.log.info(
        "perplexity %.3f (loss %.4f over %d tokens, split %s)", ppl["perplexity"], ppl["loss"], ppl["tokens"], split
    )
    metrics = {"perplexity": ppl["perplexity"], "eval_loss": ppl["loss"], "perplexity_tokens": ppl["tokens"]}
    return metrics, {**ppl, "split": split, "kind": art.kind, "definition": DEFINITION}


def heldout_rows(art: Artifact, p: EvalParams, tokenizer: Any, max_positions: int | None) -> tuple[str, Any]:
    """(split, rows of ``input_ids``): ``p.split`` or the held-out split
    ('validation', else 'test'), cut into blocks of ``p.block_size`` (default
    min(max positions, 1024)) unless packed, at most ``p.max_eval_samples``."""
    where = f"eval: {describe_input(art, 'dataset')}"
    split, rows = pick_split(
        load_dataset_dict(art),
        p.split,
        fallbacks=("validation", "test"),
        where=where,
        hint="set `split` (e.g. split: train, which is not held out)",
    )
    block = p.block_size or min(max_positions or MAX_DEFAULT_BLOCK, MAX_DEFAULT_BLOCK)
    if art.kind == DATASET:
        rows = blocks_from_text(rows, tokenizer, p.text_column, block)
    elif art.kind == TOKENIZED_DATASET:
        rows = blocks_from_ids(rows, block, tokenizer.eos_token_id)
    elif "input_ids" not in rows.column_names:
        raise StageError(f"eval: packed dataset {art.path} has no 'input_ids' column")
    if p.max_eval_samples and len(rows) > p.max_eval_samples:
        rows = rows.select(range(p.max_eval_samples))
    if len(rows) == 0:
        raise StageError(f"eval: split {split!r} of {art.path} gives no rows of {block} tokens")
    return split, rows


def blocks_from_ids(ds: Any, block_size: int, eos_id: int | None, num_proc: int | None = None) -> Any:
    """Concatenate per-document ``input_ids`` (EOS between documents) and cut
    into ``block_size`` rows; the tail shorter than a block is dropped."""

    def chunk(batch: dict[str, list[list[int]]]) -> dict[str, list[list[int]]]:
        flat: list[int] = []
        for ids in batch["input_ids"]:
            flat.extend(ids)
            if eos_id is not None and (not ids or ids[-1] != eos_id):
                flat.append(eos_id)
        n = len(flat) // block_size * block_size
        return {"input_ids": [flat[i : i + block_size] for i in range(0, n, block_size)]}

    return ds.select_columns(["input_ids"]).map(
        chunk, batched=True, batch_size=2000, remove_columns=["input_ids"], num_proc=num_proc
    )


def blocks_from_text(ds: Any, tokenizer: Any, column: str, block_size: int, num_proc: int | None = None) -> Any:
    """The documents of ``column`` tokenized (no special tokens) and cut into
    blocks by :func:`blocks_from_ids`."""
    if column not in ds.column_names:
        raise StageError(f"eval: the dataset has no text column {column!r} (columns: {ds.column_names})")
    tok = ds.select_columns([column]).map(
        lambda b: {"input_ids": tokenizer(b[column], add_special_tokens=False)["input_ids"]},
        batched=True,
        remove_columns=[column],
        num_proc=num_proc,
    )
    return blocks_from_ids(tok, block_size, tokenizer.eos_token_id, num_proc)
