"""The byte-level BPE tokenizer the data benches tokenize with (setup, never timed): trained on Tiny
Shakespeare and the first 60 modules of the interpreter's standard library, saved as transformers saves
a fast tokenizer."""

from __future__ import annotations

import sysconfig
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "recipes" / "data"


def train_bench_tokenizer(out: Path, vocab: int, add_bos_token: bool = False) -> Path:
    """Train and save the tokenizer in ``out``; returns its tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    tok.train([str(DATA / "tinyshakespeare.txt")] + [str(p) for p in sorted(stdlib.glob("*.py"))[:60]], trainer)
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    extra = {"add_bos_token": True} if add_bos_token else {}
    PreTrainedTokenizerFast(tokenizer_object=tok, **specials, **extra).save_pretrained(str(out))
    return out / "tokenizer.json"
