"""sft/formats.py: each data format becomes the columns trl's SFTTrainer reads."""

from __future__ import annotations

import pytest

from recipe_runner.stage import StageError
from recipe_runner_stages.common.prompts import alpaca_prompt
from recipe_runner_stages.train.sft.formats import detect_format, to_trl_dataset
from recipe_runner_stages.train.sft.params import SFTParams


def _dataset(rows: list[dict[str, object]]) -> object:
    from datasets import Dataset

    return Dataset.from_list(rows)


def test_formats_are_detected_by_their_columns() -> None:
    p = SFTParams()
    assert detect_format(["instruction", "input", "output"], p) == "alpaca"
    assert detect_format(["prompt", "chosen", "rejected"], p) == "chosen"
    assert detect_format(["messages"], p) == "chat"
    assert detect_format(["prompt", "completion"], p) == "prompt_completion"
    assert detect_format(["text", "id"], p) == "text"
    assert detect_format(["text"], SFTParams(format="alpaca")) == "alpaca"
    with pytest.raises(StageError, match="cannot tell the data format"):
        detect_format(["question", "answer"], p)


def test_alpaca_records_become_the_standard_prompt_and_the_response() -> None:
    ds = _dataset(
        [
            {"instruction": "Add.", "input": "1 and 2", "output": 3},
            {"instruction": "Add 2 and 3.", "input": "", "output": 5},
        ]
    )
    out = to_trl_dataset(ds, "alpaca", SFTParams())
    assert out.column_names == ["prompt", "completion"]
    assert out["prompt"] == [alpaca_prompt("Add.", "1 and 2"), alpaca_prompt("Add 2 and 3.", "")]
    assert out["completion"] == ["3", "5"]  # numbers become text


def test_renamed_columns_keep_only_what_trl_reads() -> None:
    p = SFTParams(prompt_column="q", completion_column="a", text_column="body")
    pairs = to_trl_dataset(_dataset([{"q": "x", "a": "y", "extra": 1}]), "prompt_completion", p)
    assert pairs.column_names == ["prompt", "completion"] and pairs[0] == {"prompt": "x", "completion": "y"}
    chosen = to_trl_dataset(_dataset([{"q": "x", "chosen": "good", "rejected": "bad"}]), "chosen", p)
    assert chosen[0] == {"prompt": "x", "completion": "good"}
    text = to_trl_dataset(_dataset([{"body": "some text", "id": 3}]), "text", p)
    assert text.column_names == ["text"] and text[0] == {"text": "some text"}


def test_chat_completion_only_splits_off_the_last_assistant_turn() -> None:
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    ds = _dataset([{"messages": chat}])
    split = to_trl_dataset(ds, "chat", SFTParams())
    assert split[0] == {"prompt": chat[:1], "completion": chat[1:]}
    whole = to_trl_dataset(ds, "chat", SFTParams(completion_only_loss=False))
    assert whole.column_names == ["messages"] and whole[0]["messages"] == chat
    with pytest.raises(StageError, match="does not end with an assistant message"):
        to_trl_dataset(_dataset([{"messages": chat[:1]}]), "chat", SFTParams())
