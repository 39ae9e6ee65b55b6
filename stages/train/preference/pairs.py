"""Preference pairs as reward and dpo train on them: string columns prompt
(optional), chosen and rejected, renamed from the recipe's column names, with
hh-rlhf dialogues split into an explicit prompt and the two responses."""

from __future__ import annotations

from typing import Any

from recipe_runner import StageContext, StageError

from ..training_examples import load_examples, train_eval_split
from .hh_rlhf import looks_like_hh, split_hh_pairs
from .params import HHFormat, PreferenceParams


def load_preference_splits(ctx: StageContext[Any], p: PreferenceParams, max_eval: int | None) -> tuple[Any, Any]:
    """(train pairs, held-out pairs or None) of the stage's examples, prepared
    by :func:`prepare_preferences` (held-out: the 'validation' split, else a
    seeded share ``eval_fraction`` of the train split, at most ``max_eval``)."""
    dsd = load_examples(p.data_path, ctx.inputs)
    train_raw, eval_raw = train_eval_split(dsd, p.eval_fraction, ctx.seed, max_eval)

    def prepare(ds: Any, split_name: str) -> Any:
        return prepare_preferences(
            ds, ctx, split_name, p.hh_format, p.prompt_column, p.chosen_column, p.rejected_column
        )

    return prepare(train_raw, "train"), prepare(eval_raw, "validation") if eval_raw is not None else None


def prepare_preferences(
    ds: Any,
    ctx: StageContext[Any],
    split_name: str,
    hh_format: HHFormat = "auto",
    prompt_col: str = "prompt",
    chosen_col: str = "chosen",
    rejected_col: str = "rejected",
) -> Any:
    """A preference split with string columns prompt (optional) / chosen /
    rejected.  hh-rlhf rows ("\\n\\nHuman: ... \\n\\nAssistant: ...") are split
    into an explicit prompt and the two responses; rows whose two texts do not
    share that prompt are dropped (counted in the metrics)."""
    ds = _standard_columns(ds, split_name, prompt_col, chosen_col, rejected_col)
    if "prompt" not in ds.column_names and hh_format != "never" and _is_hh(ds, hh_format):
        ds = _split_hh_split(ds, ctx, split_name)
    if len(ds) == 0:
        raise StageError(f"input 'dataset' ({split_name} split): no preference pairs left")
    return ds


def _standard_columns(ds: Any, split_name: str, prompt_col: str, chosen_col: str, rejected_col: str) -> Any:
    """The split with the recipe's columns renamed to prompt / chosen /
    rejected and every other column dropped."""
    cols = ds.column_names
    missing = [c for c in (chosen_col, rejected_col) if c not in cols]
    if missing:
        raise StageError(
            f"input 'dataset' ({split_name} split): preference training needs columns "
            f"{chosen_col!r} and {rejected_col!r} (optionally {prompt_col!r}); missing {missing}, "
            f"found {cols}"
        )
    rename = {
        c: n
        for c, n in ((prompt_col, "prompt"), (chosen_col, "chosen"), (rejected_col, "rejected"))
        if c in cols and c != n
    }
    if rename:
        clash = [n for n in rename.values() if n in cols]
        if clash:
            ds = ds.remove_columns(clash)
        ds = ds.rename_columns(rename)
    return ds.select_columns([c for c in ("prompt", "chosen", "rejected") if c in ds.column_names])


def _is_hh(ds: Any, hh_format: HHFormat) -> bool:
    """hh_format 'always', or 'auto' and the first rows' chosen texts are hh-rlhf dialogues."""
    head = ds.select(range(min(len(ds), 8)))
    return hh_format == "always" or (hh_format == "auto" and looks_like_hh(head["chosen"]))


def _split_hh_split(ds: Any, ctx: StageContext[Any], split_name: str) -> Any:
    """hh-rlhf pairs split into prompt / responses; pairs whose texts do not
    share the prompt are dropped and counted (``hh_pairs_dropped_<split>``)."""
    n0 = len(ds)
    ds = ds.map(split_hh_pairs, batched=True, desc=f"splitting hh-rlhf {split_name} pairs")
    ds = ds.filter(lambda ok: ok, input_columns="_ok", batched=False).remove_columns("_ok")
    dropped = n0 - len(ds)
    ctx.metrics[f"hh_pairs_dropped_{split_name}"] = dropped
    if dropped:
        ctx.log.warning(
            "%d of %d %s pairs dropped: chosen and rejected do not share the prompt "
            "(text up to the last '\\n\\nAssistant:')",
            dropped,
            n0,
            split_name,
        )
    return ds
