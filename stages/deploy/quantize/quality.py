"""The quantize stage's before/after comparison: sizes on disk, held-out
perplexity on a bounded number of tokens of the dataset input, and a greedy
sample generation, measured on the source model and on the quantized model
read back.  Heavy imports stay inside the functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recipe_runner import DATASET, PACKED_DATASET, TOKENIZED_DATASET, Artifact, StageError

from ...common.datasets import describe_input, load_dataset_dict, pick_split
from ...common.generation import GenerationSettings, generate_texts
from ...common.perplexity import perplexity

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")

#: the column a dataset kind's text or tokens are read from
_TOKEN_COLUMNS = {DATASET: "text", TOKENIZED_DATASET: "input_ids", PACKED_DATASET: "input_ids"}

Windows = list[list[int]]


def weights_size(path: str | Path) -> int:
    """Bytes of the weight files in a model directory (or of one file)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))


def source_safetensors_size(model_dir: str | Path) -> int:
    size = sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors"))
    if size == 0:
        raise StageError(f"{model_dir}: no *.safetensors weights in the model input")
    return size


def token_stream(
    art: Artifact, tokenizer: Any, split: str, max_tokens: int, batch_rows: int = 64
) -> tuple[list[int], str]:
    """(up to ``max_tokens`` token ids, the split read): the split's documents
    (tokenized when text) joined by EOS, packed rows joined as they are.
    ``split`` 'auto' is validation where there is one, else train.  Reads the
    dataset in batches and stops as soon as it has enough."""
    col = _TOKEN_COLUMNS.get(art.kind)
    if col is None:
        raise StageError(f"dataset input has kind {art.kind!r}; expected a dataset, tokenized or packed dataset")
    where = describe_input(art, "dataset")
    dd = load_dataset_dict(art)
    asked = None if split == "auto" else split
    split_name, ds = pick_split(dd, asked, fallbacks=("validation", "train"), where=where)
    if col not in ds.column_names:
        raise StageError(f"{where} split {split_name!r}: no column {col!r} (has {ds.column_names})")
    eos = tokenizer.eos_token_id if art.kind != PACKED_DATASET else None
    ids: list[int] = []
    for start in range(0, len(ds), batch_rows):
        rows = ds[start : start + batch_rows][col]
        if col == "text":
            rows = tokenizer([t for t in rows if t], add_special_tokens=False)["input_ids"]
        for r in rows:
            ids.extend(int(x) for x in r)
            if eos is not None:
                ids.append(eos)
        if len(ids) >= max_tokens:
            break
    return ids[:max_tokens], split_name


def eval_windows(
    art: Artifact, tokenizer: Any, vocab_size: int, split: str, max_tokens: int, seq_len: int
) -> tuple[Windows, str, int]:
    """(token windows, split, tokens): windows of ``seq_len`` ids (the last
    may be shorter, never under 2) for perplexity."""
    ids, split_name = token_stream(art, tokenizer, split, max_tokens)
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


def measure(model: Any, tokenizer: Any, windows: Windows, prompt: str, max_new_tokens: int) -> dict[str, Any]:
    """Perplexity on the token windows (when there are any) and the greedy
    continuation of ``prompt`` (when it and ``max_new_tokens`` are set)."""
    out: dict[str, Any] = {}
    if windows:
        out["perplexity"] = perplexity(model, windows).perplexity
    if prompt and max_new_tokens > 0:
        settings = GenerationSettings(max_new_tokens=max_new_tokens)
        out["sample"] = generate_texts(model, tokenizer, [prompt], settings, add_special_tokens=True)[0]
    return out


def comparison_metrics(before: dict[str, Any], after: dict[str, Any], prompt: str) -> dict[str, Any]:
    """Perplexity before / after and its change (absolute and in percent),
    and the samples before / after, for what was measured."""
    m: dict[str, Any] = {}
    if "perplexity" in before:
        m.update(
            perplexity_before=round(before["perplexity"], 4),
            perplexity_after=round(after["perplexity"], 4),
            perplexity_delta=round(after["perplexity"] - before["perplexity"], 4),
            perplexity_delta_pct=round(100 * (after["perplexity"] / before["perplexity"] - 1), 3),
        )
    if "sample" in before:
        m.update(prompt=prompt, sample_before=before["sample"], sample_after=after["sample"])
    return m
