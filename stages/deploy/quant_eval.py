"""Before/after measurements for the quantize stage: sizes on disk, held-out
perplexity on a bounded number of tokens, a greedy sample generation, and the
calibration texts GPTQ needs.  Heavy imports stay inside the functions."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from recipe_runner.artifacts import DATASET, PACKED_DATASET, TOKENIZED_DATASET, Artifact
from recipe_runner.stage import StageError

from ..common.generation import GenerationSettings, generate_texts
from ..common.perplexity import perplexity

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")


def weights_size(path: str | Path) -> int:
    """Bytes of the weight files in a model directory (or of one file)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))


def dir_size(path: str | Path) -> int:
    p = Path(path)
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def source_safetensors_size(model_dir: str | Path) -> int:
    size = sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors"))
    if size == 0:
        raise StageError(f"{model_dir}: no *.safetensors weights in the model input")
    return size


def _load_split(art: Artifact, split: str):
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(art.path))
    except Exception as e:
        raise StageError(f"dataset input {art.path}: cannot load it with datasets.load_from_disk ({e})") from e
    if isinstance(ds, Dataset):
        return ds, "train"
    assert isinstance(ds, DatasetDict)
    if split == "auto":
        split = "validation" if "validation" in ds else "train"
    if split not in ds:
        raise StageError(f"dataset input {art.path}: no split {split!r} (has {sorted(ds)})")
    return ds[split], split


def _token_stream(art: Artifact, tokenizer, split: str, max_tokens: int, batch_rows: int = 64):
    """Up to ``max_tokens`` token ids from the dataset, documents joined by EOS.
    Reads the dataset in batches and stops as soon as it has enough."""
    ds, split_name = _load_split(art, split)
    if art.kind == DATASET:
        col = "text"
    elif art.kind in (TOKENIZED_DATASET, PACKED_DATASET):
        col = "input_ids"
    else:
        raise StageError(f"dataset input has kind {art.kind!r}; expected a dataset, tokenized or packed dataset")
    if col not in ds.column_names:
        raise StageError(f"dataset input {art.path} split {split_name!r}: no column {col!r} (has {ds.column_names})")
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for start in range(0, len(ds), batch_rows):
        rows = ds[start : start + batch_rows][col]
        if col == "text":
            rows = tokenizer([t for t in rows if t], add_special_tokens=False)["input_ids"]
        for r in rows:
            ids.extend(int(x) for x in r)
            if art.kind != PACKED_DATASET and eos is not None:
                ids.append(eos)
        if len(ids) >= max_tokens:
            break
    return ids[:max_tokens], split_name


def eval_windows(art: Artifact, tokenizer, vocab_size: int, split: str, max_tokens: int, seq_len: int):
    """Token windows (lists of ids, each ``seq_len`` long but the last) for perplexity."""
    ids, split_name = _token_stream(art, tokenizer, split, max_tokens)
    if len(ids) < 2:
        raise StageError(f"dataset input {art.path} split {split_name!r} gave fewer than 2 tokens to evaluate on")
    if max(ids) >= vocab_size:
        raise StageError(
            f"dataset input {art.path}: token id {max(ids)} is outside the model's vocabulary ({vocab_size}); "
            "was it tokenized with another tokenizer?"
        )
    windows = [ids[i : i + seq_len] for i in range(0, len(ids), seq_len)]
    windows = [w for w in windows if len(w) >= 2]
    return windows, split_name, sum(len(w) for w in windows)


def calibration_examples(art: Artifact, tokenizer, n_samples: int, seq_len: int) -> list[dict[str, list[int]]]:
    """GPTQ calibration: ``n_samples`` sequences of up to ``seq_len`` tokens from
    the train split (held-out perplexity uses validation where there is one)."""
    ids, _ = _token_stream(art, tokenizer, "train", n_samples * seq_len)
    out = [ids[i : i + seq_len] for i in range(0, len(ids), seq_len)]
    out = [w for w in out if len(w) >= 10][:n_samples]
    if not out:
        raise StageError(f"dataset input {art.path}: not enough text for GPTQ calibration")
    return [{"input_ids": w, "attention_mask": [1] * len(w)} for w in out]


def measure(model, tokenizer, windows, prompt: str, max_new_tokens: int) -> dict[str, Any]:
    """Perplexity on the token windows (when there are any) and the greedy
    continuation of ``prompt`` (when it and ``max_new_tokens`` are set)."""
    out: dict[str, Any] = {}
    if windows:
        out["perplexity"] = perplexity(model, windows).perplexity
    if prompt and max_new_tokens > 0:
        settings = GenerationSettings(max_new_tokens=max_new_tokens)
        out["sample"] = generate_texts(model, tokenizer, [prompt], settings, add_special_tokens=True)[0]
    return out
