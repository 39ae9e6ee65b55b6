"""The packed rows pretrain trains on: read and checked (a 'train' split with
'input_ids'), a held-out validation share where the data has no validation
split, the columns a causal LM takes, and the checks that the rows fit the
model (the same tokenizer by digest, row length within its positions, token
ids within its vocabulary)."""

from __future__ import annotations

from typing import Any

from recipe_runner import Artifact, StageContext, StageError

from ...common.datasets import load_dataset_dict, require_column
from ...common.models import MODEL_COLUMNS, max_positions
from ...common.tokenizer_digest import TOKENIZER_DIGEST, short, tokenizer_digest
from .params import PretrainParams


def load_packed(art: Artifact, slot: str = "dataset") -> Any:
    """The packed dataset bound to ``slot``: a DatasetDict with a 'train'
    split, every split with an 'input_ids' column."""
    ds = load_dataset_dict(art, slot, require_split="train")
    require_column(ds, "input_ids", slot, hint="pretrain trains on the packed rows of a pack stage")
    return ds


def training_rows(ctx: StageContext[PretrainParams], ds: Any) -> tuple[Any, Any]:
    """(train rows, validation rows or None) in torch format with only the
    model's columns: the 'validation' split, else (validation_fraction) a
    seeded hold-out of the train rows, at most max_eval_samples."""
    p = ctx.params
    train = ds["train"]
    if len(train) == 0:
        raise StageError("pretrain: the packed 'train' split is empty")
    val = ds["validation"] if "validation" in ds and len(ds["validation"]) else None
    if val is None and p.validation_fraction > 0:
        n_val = max(1, int(round(len(train) * p.validation_fraction)))
        if n_val >= len(train):
            raise StageError(
                f"pretrain: validation_fraction {p.validation_fraction} leaves no training rows ({len(train)} rows)"
            )
        split = train.train_test_split(test_size=n_val, seed=ctx.seed, shuffle=True)
        train, val = split["train"], split["test"]
        ctx.log.info("held out %d of %d rows for validation", n_val, n_val + len(train))
    if val is not None and p.max_eval_samples and len(val) > p.max_eval_samples:
        val = val.select(range(p.max_eval_samples))
    return _model_columns(train), _model_columns(val) if val is not None else None


def _model_columns(rows: Any) -> Any:
    return rows.select_columns([c for c in MODEL_COLUMNS if c in rows.column_names]).with_format("torch")


def check_rows_fit_model(model: Any, ds: Any, seq_len: int) -> int:
    """StageError when the rows are longer than the model's positions or hold
    a token id past its embeddings; returns the model's vocabulary size."""
    config = model.config
    max_pos = max_positions(model) or getattr(config, "n_positions", None)
    if max_pos and seq_len > max_pos:
        raise StageError(
            f"pretrain: packed rows of {seq_len} tokens exceed the model's max_position_embeddings "
            f"({max_pos}); pack shorter rows or raise max_position_embeddings at init"
        )
    vocab = int(model.get_input_embeddings().weight.shape[0])
    top = max(max_token_id(ds["train"]), max_token_id(ds["validation"]) if "validation" in ds else -1)
    if top >= vocab:
        raise StageError(
            f"pretrain: the packed dataset holds token id {top} but the model's vocabulary has {vocab} "
            f"tokens (ids 0 to {vocab - 1}): the data was tokenized with another tokenizer than the "
            "model's. Tokenize with the model's tokenizer, or start the model with the data's tokenizer "
            "(the init stage's `tokenizer` parameter, or its `tokenizer` input for a random init)"
        )
    return vocab


def check_same_tokenizer(data: Artifact, model: Artifact, model_tokenizer: Any) -> str | None:
    """StageError when the packed data's tokenizer digest (recorded by
    tokenize, passed on by pack) differs from the model's (recorded by init,
    else computed from the tokenizer its directory carries); when either is
    unknown there is nothing to compare.  Returns the model's digest."""
    data_digest = data.meta.get(TOKENIZER_DIGEST)
    model_digest = model.meta.get(TOKENIZER_DIGEST) or tokenizer_digest(model_tokenizer)
    if data_digest and model_digest and data_digest != model_digest:
        raise StageError(
            f"pretrain: the packed dataset{_from(data)} was tokenized with tokenizer {short(data_digest)} "
            f"(vocabulary {data.meta.get('vocab_size', '?')}), but the model{_from(model)} carries tokenizer "
            f"{short(model_digest)} (vocabulary {model.meta.get('vocab_size', '?')}): the same ids would mean "
            "other tokens. Tokenize with the model's tokenizer (the tokenize stage's `tokenizer` parameter "
            "or input), or start the model with the data's tokenizer (the init stage's `tokenizer` "
            "parameter, or its `tokenizer` input for a random init)"
        )
    return model_digest


def _from(art: Artifact) -> str:
    return f" (from stage {art.producer!r})" if art.producer else f" ({art.path})"


def max_token_id(ds: Any) -> int:
    """Largest token id in a dataset's input_ids (Arrow compute, no Python loop)."""
    import pyarrow.compute as pc

    flat = pc.list_flatten(ds.data.column("input_ids"))
    value = pc.max(flat).as_py()
    return -1 if value is None else int(value)


def row_length(ds: Any) -> int:
    """The length of the longest row of input_ids."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(ds.data.column("input_ids"))
    return int(pc.max(lengths).as_py() or 0)
