"""The tokenizer of the tokenize stage: loaded from a local directory or the
hub (its cache when the hub cannot be used), or trained on the train split
with the ``tokenizers`` trainers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from recipe_runner import StageError

from ...common.hub import unavailable_reason

#: four times the largest vocabularies in use
MAX_VOCAB_SIZE = 2**20


class TrainTokenizerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["bpe", "unigram"] = Field(
        "bpe",
        description=(
            "'bpe' (byte-level BPE, as GPT-2/Llama 3: never an unknown token) or 'unigram' "
            "(SentencePiece-style, Metaspace)."
        ),
    )
    vocab_size: int = Field(
        8192, ge=64, le=MAX_VOCAB_SIZE, description="Vocabulary size, special tokens included (64 to 2**20)."
    )
    min_frequency: int = Field(2, ge=1, description="BPE: a pair must occur this often to be merged.")
    max_documents: int | None = Field(
        None, ge=1, description="Train on at most this many documents of the train split (default: all)."
    )
    bos_token: str = Field("<s>", description="Beginning-of-sequence token.")
    eos_token: str = Field("</s>", description="End-of-sequence token.")
    pad_token: str = Field("<pad>", description="Padding token.")
    unk_token: str = Field("<unk>", description="Unknown token.")


def load_tokenizer_from(name: str, revision: str | None) -> Any:
    """A tokenizer from a local directory, else from the hub; when the hub is
    offline or out of reach, from the local Hugging Face cache only."""
    local = Path(name).expanduser()
    if local.exists():
        try:
            return load_local_tokenizer(local)
        except Exception as e:  # transformers raises many types for a broken directory
            raise StageError(f"cannot load a tokenizer from {local}: {type(e).__name__}: {e}") from e
    from transformers import AutoTokenizer

    reason = unavailable_reason()
    if reason:
        try:
            return AutoTokenizer.from_pretrained(name, revision=revision, local_files_only=True)
        except Exception as e:  # not in the cache
            raise StageError(
                f"tokenizer {name!r} is not a local directory and not in the local Hugging Face cache, and {reason}. "
                "Give a local tokenizer directory, or leave 'tokenizer' unset to train one here."
            ) from e
    try:
        return AutoTokenizer.from_pretrained(name, revision=revision)
    except Exception as e:  # network, authentication, a missing repository
        raise StageError(f"cannot load the tokenizer {name!r} from the hub: {type(e).__name__}: {e}") from e


def load_local_tokenizer(directory: Path) -> Any:
    """The tokenizer saved in ``directory``, as ``AutoTokenizer`` loads it.

    A directory holding transformers' generic fast tokenizer (a tokenizer.json,
    ``tokenizer_class`` ``TokenizersBackend`` or ``PreTrainedTokenizerFast``,
    no model config, no custom code: what ``save_pretrained`` writes for a
    tokenizer trained here or with ``tokenizers``) is loaded by that class
    directly, which is the class ``AutoTokenizer`` picks for it.  The
    ``AutoTokenizer`` machinery imports the model configurations, and with them
    torch: about 3 s of the stage on a small input, for nothing."""
    cls = _generic_fast_class(directory)
    if cls is not None:
        return cls.from_pretrained(str(directory), _from_auto=True)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


#: the names transformers' generic fast tokenizer is saved under (5.x, 4.x)
_GENERIC_FAST = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _generic_fast_class(directory: Path) -> Any | None:
    """transformers' generic fast tokenizer class when ``directory`` is one of
    its saves (see :func:`load_local_tokenizer`), else None."""
    import json

    config_file = directory / "tokenizer_config.json"
    if not (directory / "tokenizer.json").is_file() or not config_file.is_file():
        return None
    if (directory / "config.json").exists():  # a model's directory: AutoTokenizer reads its model type
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or "auto_map" in config or config.get("tokenizer_class") not in _GENERIC_FAST:
        return None
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast


def train_tokenizer(ds: Any, column: str, t: TrainTokenizerParams, add_bos: bool) -> Any:
    """Train a byte-level BPE or a Unigram tokenizer with the `tokenizers`
    trainers, fed by a batch iterator over the Arrow data."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys([t.unk_token, t.bos_token, t.eos_token, t.pad_token]))
    trainer: trainers.BpeTrainer | trainers.UnigramTrainer
    if t.algorithm == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=t.vocab_size,
            min_frequency=t.min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    else:
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=t.vocab_size, special_tokens=specials, unk_token=t.unk_token, show_progress=False
        )
    n = len(ds) if t.max_documents is None else min(len(ds), t.max_documents)
    tok.train_from_iterator(_text_batches(ds, column, t.max_documents), trainer=trainer, length=n)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=t.bos_token,
        eos_token=t.eos_token,
        pad_token=t.pad_token,
        unk_token=t.unk_token,
        add_bos_token=add_bos,
        add_eos_token=False,
    )


def _text_batches(ds: Any, column: str, limit: int | None, batch_size: int = 1000) -> Iterator[list[str]]:
    seen = 0
    for batch in ds.with_format("arrow", columns=[column]).iter(batch_size=batch_size):
        texts = batch.column(0).to_pylist()
        if limit is not None and seen + len(texts) > limit:
            texts = texts[: limit - seen]
        seen += len(texts)
        yield [t for t in texts if t]
        if limit is not None and seen >= limit:
            return
