"""trainer_args.py: the recipe's training parameters as TrainingArguments."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from recipe_runner.stage import StageContext
from recipe_runner_stages.train.trainer_args import TrainingParams, training_arguments_kwargs

MakeContext = Callable[..., StageContext[Any]]


def test_training_arguments_on_a_cpu(tmp_path: Path, make_context: MakeContext) -> None:
    from transformers import TrainingArguments

    p = TrainingParams(max_steps=3, precision="auto", device="cpu", warmup_ratio=0.1, eval_steps=2)
    kw = training_arguments_kwargs(p, make_context(p), has_eval=True)
    args = TrainingArguments(**kw)
    assert args.output_dir == str(tmp_path / "ckpt")
    assert (args.max_steps, args.seed, args.data_seed) == (3, 5, 5)
    assert args.use_cpu and not args.bf16 and not args.fp16
    assert kw["warmup_steps"] == 0.1  # no warmup_steps: the ratio
    assert kw["eval_strategy"] == "steps" and kw["report_to"] == "none"
    no_eval = training_arguments_kwargs(p, make_context(p), has_eval=False)
    assert no_eval["eval_strategy"] == "no"
