"""The data formats sft reads and their conversion into what trl's
SFTTrainer trains on: prompt/completion (alpaca, prompt_completion, chosen,
chat with the loss on the last assistant turn), messages (whole chats) or
plain text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from recipe_runner import StageError

from ...common.prompts import alpaca_prompts_batch
from ..preference.hh_rlhf import split_hh
from .params import SFTParams


def detect_format(columns: list[str], p: SFTParams) -> str:
    """The recipe's format, or (auto) the first one whose columns the data has."""
    if p.format != "auto":
        return p.format
    if p.instruction_column in columns and p.output_column in columns:
        return "alpaca"
    if "chosen" in columns and "rejected" in columns:
        return "chosen"
    if p.messages_column in columns:
        return "chat"
    if p.prompt_column in columns and p.completion_column in columns:
        return "prompt_completion"
    if p.text_column in columns:
        return "text"
    raise StageError(
        f"input 'dataset': cannot tell the data format from the columns {columns}; expected "
        f"{p.instruction_column}/{p.output_column} (alpaca), {p.messages_column} (chat), "
        f"{p.prompt_column}/{p.completion_column} or {p.text_column}; or set 'format'"
    )


def to_trl_dataset(ds: Any, fmt: str, p: SFTParams) -> Any:
    """Convert one split into a dataset format trl's SFTTrainer reads:
    prompt/completion (alpaca, prompt_completion, chat with completion-only
    loss), messages (chat) or text."""
    return _CONVERTERS[fmt](ds, p)


def _need(columns: list[str], needed: list[str], fmt: str) -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise StageError(f"input 'dataset': format {fmt!r} needs column(s) {missing}; the dataset has {columns}")


def _renamed(ds: Any, renames: dict[str, str]) -> Any:
    """The split with only the columns in ``renames``, renamed."""
    ds = ds.select_columns(list(renames))
    changed = {k: v for k, v in renames.items() if k != v}
    return ds.rename_columns(changed) if changed else ds


def _alpaca(ds: Any, p: SFTParams) -> Any:
    """Alpaca records -> the standard Alpaca prompt and the response as its completion."""
    cols = ds.column_names
    _need(cols, [p.instruction_column, p.output_column], "alpaca")
    input_column = p.input_column if p.input_column in cols else None

    def convert(batch: dict[str, list[Any]]) -> dict[str, list[str]]:
        records = {"instruction": batch[p.instruction_column]}
        if input_column:
            records["input"] = batch[input_column]
        return {"prompt": alpaca_prompts_batch(records), "completion": [str(o) for o in batch[p.output_column]]}

    return ds.map(convert, batched=True, remove_columns=cols, desc="alpaca -> prompt/completion")


def _chosen(ds: Any, p: SFTParams) -> Any:
    """The preferred side of preference pairs: the prompt column and 'chosen',
    or hh-rlhf 'chosen' dialogues split at the last '\\n\\nAssistant:'."""
    cols = ds.column_names
    _need(cols, ["chosen"], "chosen")
    if p.prompt_column in cols:
        return _renamed(ds, {p.prompt_column: "prompt", "chosen": "completion"})
    out = ds.map(_split_hh_chosen, batched=True, remove_columns=cols, desc="hh-rlhf chosen -> prompt/completion")
    if len(out) == 0:
        raise StageError(
            "format 'chosen': no 'chosen' text has a '\\n\\nAssistant:' turn to split at, and "
            f"there is no {p.prompt_column!r} column"
        )
    return out


def _split_hh_chosen(batch: dict[str, list[str]]) -> dict[str, list[str]]:
    """hh-rlhf chosen dialogues -> prompt / completion; dialogues without an
    Assistant turn or with an empty last answer are dropped."""
    prompts, completions = [], []
    for text in batch["chosen"]:
        parts = split_hh(text)
        if parts is not None and parts[1].strip():
            prompts.append(parts[0])
            completions.append(parts[1])
    return {"prompt": prompts, "completion": completions}


def _prompt_completion(ds: Any, p: SFTParams) -> Any:
    _need(ds.column_names, [p.prompt_column, p.completion_column], "prompt_completion")
    return _renamed(ds, {p.prompt_column: "prompt", p.completion_column: "completion"})


def _chat(ds: Any, p: SFTParams) -> Any:
    """Whole chats ('messages'), or with completion-only loss the chat up to
    the last assistant turn as the prompt and that turn as the completion."""
    _need(ds.column_names, [p.messages_column], "chat")
    ds = ds.select_columns([p.messages_column])
    if p.completion_only_loss:
        return ds.map(
            _split_last_turn,
            batched=True,
            fn_kwargs={"col": p.messages_column},
            remove_columns=[p.messages_column],
            desc="chat -> prompt/last assistant turn",
        )
    return _renamed(ds, {p.messages_column: "messages"})


def _split_last_turn(batch: dict[str, list[Any]], col: str) -> dict[str, list[Any]]:
    prompts, completions = [], []
    for msgs in batch[col]:
        if not msgs or msgs[-1].get("role") != "assistant":
            raise StageError(
                "input 'dataset': a chat example does not end with an assistant message, so it has no "
                "completion to train on (set completion_only_loss: false to train on whole chats)"
            )
        prompts.append(msgs[:-1])
        completions.append(msgs[-1:])
    return {"prompt": prompts, "completion": completions}


def _text(ds: Any, p: SFTParams) -> Any:
    _need(ds.column_names, [p.text_column], "text")
    return _renamed(ds, {p.text_column: "text"})


_CONVERTERS: dict[str, Callable[[Any, SFTParams], Any]] = {
    "alpaca": _alpaca,
    "chosen": _chosen,
    "prompt_completion": _prompt_completion,
    "chat": _chat,
    "text": _text,
}
