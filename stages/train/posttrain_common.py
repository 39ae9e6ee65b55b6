"""Shared pieces of the post-training stages (sft, reward, dpo, ppo):
parameter blocks (LoRA, QLoRA), dataset loading and splitting, preference
formats (hh-rlhf Human/Assistant splitting), shipped chat templates, and
batched reward scoring.  Heavy libraries are imported inside functions only."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from recipe_runner.artifacts import DATASET, PREFERENCE_DATASET, Artifact
from recipe_runner.stage import Input, Params, StageContext, StageError

# ---------------------------------------------------------------- templates

# Chat templates for tokenizers that have none.  Special markers are plain
# text (no tokens are added to the vocabulary, so no embedding resize is
# needed); every turn ends with the tokenizer's EOS token so generation stops
# after the assistant's answer.
CHAT_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + eos_token + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "zephyr": (
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + eos_token + '\n' }}"
        "{% elif message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + eos_token + '\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
}

HH_ASSISTANT = "\n\nAssistant:"


def split_hh(text: str) -> tuple[str, str] | None:
    """hh-rlhf's "\\n\\nHuman: ...\\n\\nAssistant: ..." text -> (prompt, response):
    the prompt is everything up to and including the last "\\n\\nAssistant:"."""
    i = text.rfind(HH_ASSISTANT)
    if i < 0:
        return None
    cut = i + len(HH_ASSISTANT)
    return text[:cut], text[cut:]


# ---------------------------------------------------------------- params


class LoraParams(Params):
    """LoRA adapter settings (peft.LoraConfig)."""

    r: int = Field(16, ge=1, description="rank of the low-rank update matrices (the course uses 16)")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator: the update is scaled by alpha / r (the course uses 32)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA branch input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="module names to adapt (e.g. [q_proj, v_proj]) or 'all-linear' for every linear layer except the output head")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="which biases to train")
    modules_to_save: list[str] | None = Field(
        None, description="extra modules trained in full and saved with the adapter (e.g. [lm_head, embed_tokens])")

    def to_peft(self, task_type: str = "CAUSAL_LM"):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=self.target_modules, bias=self.bias,
                          modules_to_save=self.modules_to_save, task_type=task_type)


class QLoraParams(Params):
    """4-bit quantisation of the frozen base model for QLoRA (bitsandbytes; CUDA only)."""

    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type (NormalFloat4 as in the QLoRA paper)")
    double_quant: bool = Field(True, description="also quantise the quantisation constants (saves ~0.4 bit/param)")
    compute_dtype: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="dtype the 4-bit weights are dequantised to for matmuls")


def bnb_config(q: QLoraParams, device: str):
    """BitsAndBytesConfig for QLoRA, refused with a clear message where it cannot run."""
    if device != "cuda":
        raise StageError("QLoRA (method: qlora) loads the base model in 4 bits with bitsandbytes, which needs a CUDA "
                         "GPU; none is visible here. Use method: lora (same adapter, unquantised base) on a CPU.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise StageError("QLoRA needs bitsandbytes: pip install 'recipe-runner[gpu]' (or bitsandbytes)") from e
    from transformers import BitsAndBytesConfig

    from ..common.devices import torch_dtype

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                              bnb_4bit_use_double_quant=q.double_quant,
                              bnb_4bit_compute_dtype=torch_dtype(q.compute_dtype))


# ---------------------------------------------------------------- datasets

DATA_PATH_DESC = ("read the examples straight from a local .json / .jsonl / .csv / .parquet file (optionally .gz), "
                  "keeping every column (e.g. instruction/input/output or chosen/rejected); when set, the stage "
                  "takes no 'dataset' input")


def data_input_slots(params: Any, slots: dict[str, Input], slot: str = "dataset") -> dict[str, Input]:
    if getattr(params, "data_path", None):
        slots.pop(slot, None)
    return slots


def data_path_fingerprint(params: Any) -> Any:
    """Size and mtime of a data_path file, so an edited file invalidates the cache."""
    path = getattr(params, "data_path", None)
    if not path:
        return None
    try:
        st = Path(path).stat()
        return {"data_path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        return {"data_path": str(path), "missing": True}


def load_stage_dataset(ctx: StageContext, slot: str = "dataset"):
    """The stage's examples as a DatasetDict: the 'dataset' input, or the
    file named by the data_path parameter."""
    path = getattr(ctx.params, "data_path", None)
    if not path:
        return load_dataset_dict(ctx.input(slot), slot)
    from datasets import DatasetDict, load_dataset

    p = Path(path)
    if not p.is_file():
        raise StageError(f"data_path: {path} is not a file")
    suffixes = [x for x in p.suffixes if x != ".gz"]
    fmt = {".json": "json", ".jsonl": "json", ".ndjson": "json", ".csv": "csv", ".parquet": "parquet"}.get(
        suffixes[-1] if suffixes else "")
    if fmt is None:
        raise StageError(f"data_path: {path}: unknown format (use .json, .jsonl, .csv or .parquet, optionally .gz)")
    try:
        ds = load_dataset(fmt, data_files=str(p), split="train")
    except Exception as e:  # noqa: BLE001
        raise StageError(f"data_path: cannot read {path} as {fmt}: {type(e).__name__}: {e}") from e
    return DatasetDict({"train": ds})



def load_dataset_dict(art: Artifact, slot: str = "dataset"):
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(art.path))
    except Exception as e:  # noqa: BLE001 - a clear message beats a datasets traceback
        raise StageError(f"input {slot!r}: cannot load a dataset from {art.path}: {e}") from e
    if not isinstance(ds, DatasetDict):
        ds = DatasetDict({"train": ds})
    if "train" not in ds:
        raise StageError(f"input {slot!r}: the dataset at {art.path} has no 'train' split (splits: {list(ds)})")
    return ds


def train_eval_split(dsd: Any, eval_fraction: float, seed: int, max_eval: int | None = None):
    """(train, eval or None): the 'validation' split when the dataset has one,
    else a seeded hold-out of ``eval_fraction`` of the train split."""
    train = dsd["train"]
    ev = dsd["validation"] if "validation" in dsd else None
    if ev is None and eval_fraction > 0 and len(train) >= 2:
        n_eval = max(1, int(round(len(train) * eval_fraction)))
        if max_eval:
            n_eval = min(n_eval, max_eval)
        n_eval = min(n_eval, len(train) - 1)
        split = train.train_test_split(test_size=n_eval, seed=seed, shuffle=True)
        train, ev = split["train"], split["test"]
    elif ev is not None and max_eval and len(ev) > max_eval:
        ev = ev.select(range(max_eval))
    return train, ev


def _hh_split_batch(batch: dict[str, list]) -> dict[str, list]:
    out: dict[str, list] = {"prompt": [], "chosen": [], "rejected": [], "_ok": []}
    for c, r in zip(batch["chosen"], batch["rejected"]):
        sp = split_hh(c)
        if sp is None or not r.startswith(sp[0]):
            out["prompt"].append(""), out["chosen"].append(c), out["rejected"].append(r), out["_ok"].append(False)
            continue
        prompt, chosen = sp
        out["prompt"].append(prompt)
        out["chosen"].append(chosen)
        out["rejected"].append(r[len(prompt):])
        out["_ok"].append(True)
    return out


def looks_like_hh(texts: list[str]) -> bool:
    return bool(texts) and all(isinstance(t, str) and "\n\nHuman:" in t and HH_ASSISTANT in t for t in texts)


def prepare_preferences(ds: Any, ctx: StageContext, split_name: str, hh_format: str = "auto",
                        prompt_col: str = "prompt", chosen_col: str = "chosen", rejected_col: str = "rejected",
                        require_prompt: bool = False):
    """A preference split with string columns prompt (optional) / chosen /
    rejected.  hh-rlhf rows ("\\n\\nHuman: ... \\n\\nAssistant: ...") are split
    into an explicit prompt and the two responses; rows whose two texts do not
    share that prompt are dropped (counted in the metrics)."""
    cols = ds.column_names
    missing = [c for c in (chosen_col, rejected_col) if c not in cols]
    if missing:
        raise StageError(f"input 'dataset' ({split_name} split): preference training needs columns "
                         f"{chosen_col!r} and {rejected_col!r} (optionally {prompt_col!r}); missing {missing}, "
                         f"found {cols}")
    rename = {c: n for c, n in ((prompt_col, "prompt"), (chosen_col, "chosen"), (rejected_col, "rejected"))
              if c in cols and c != n}
    if rename:
        clash = [n for n in rename.values() if n in cols]
        if clash:
            ds = ds.remove_columns(clash)
        ds = ds.rename_columns(rename)
    keep = [c for c in ("prompt", "chosen", "rejected") if c in ds.column_names]
    ds = ds.select_columns(keep)
    has_prompt = "prompt" in ds.column_names
    if not has_prompt and hh_format != "never":
        head = ds.select(range(min(len(ds), 8)))
        is_hh = hh_format == "always" or (hh_format == "auto" and looks_like_hh(head["chosen"]))
        if is_hh:
            n0 = len(ds)
            ds = ds.map(_hh_split_batch, batched=True, desc=f"splitting hh-rlhf {split_name} pairs")
            ds = ds.filter(lambda ok: ok, input_columns="_ok", batched=False).remove_columns("_ok")
            dropped = n0 - len(ds)
            ctx.metrics[f"hh_pairs_dropped_{split_name}"] = dropped
            if dropped:
                ctx.log.warning("%d of %d %s pairs dropped: chosen and rejected do not share the prompt "
                                "(text up to the last '\\n\\nAssistant:')", dropped, n0, split_name)
            has_prompt = True
    if require_prompt and not has_prompt:
        raise StageError(f"input 'dataset' ({split_name} split): this stage needs an explicit prompt: a "
                         f"{prompt_col!r} column, or hh-rlhf style texts ('\\n\\nHuman: ...\\n\\nAssistant: ...')")
    if len(ds) == 0:
        raise StageError(f"input 'dataset' ({split_name} split): no preference pairs left")
    return ds


PREFERENCE_INPUT = Input(DATASET, PREFERENCE_DATASET,
                         description="preference pairs: columns chosen / rejected and optionally prompt "
                                     "(hh-rlhf's Human/Assistant texts are split into prompt / responses)")


# ---------------------------------------------------------------- rewards


def score_texts(model: Any, tokenizer: Any, texts: list[str], batch_size: int = 16,
                max_length: int | None = None, add_eos: bool = True) -> list[float]:
    """Scalar rewards of a sequence-classification reward model, batched.
    EOS is appended as trl's RewardTrainer does during training, so scores
    are read at the same position."""
    import torch

    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    scores: list[float] = []
    eos = tokenizer.eos_token or ""
    try:
        model.eval()
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                chunk = [t if (not add_eos or t.endswith(eos)) else t + eos for t in texts[i:i + batch_size]]
                enc = tokenizer(chunk, return_tensors="pt", padding=True, truncation=max_length is not None,
                                max_length=max_length, add_special_tokens=False)
                enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                out = model(**enc).logits[:, 0]
                scores.extend(out.float().cpu().tolist())
    finally:
        tokenizer.padding_side = old_side
    return scores


def history_summary(history: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """First and last logged value of each key (e.g. loss) from a trainer log history."""
    out: dict[str, Any] = {}
    for k in keys:
        vals = [h[k] for h in history if k in h]
        if vals:
            key = k.replace("/", "_")
            out[f"{key}_first"] = float(vals[0])
            out[f"{key}_last"] = float(vals[-1])
    return out
