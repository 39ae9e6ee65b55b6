"""The ``eval`` stage's parameters."""

from __future__ import annotations

import math

from pydantic import Field, field_validator, model_validator

from recipe_runner import Params

from ..common.devices import Device, Precision, cpu_threads_field
from .judge.params import JudgeParams

LIMIT_DESCRIPTION = (
    "examples per task: a whole number (at least 1), or a fraction of the task strictly between 0 and 1; None = all"
)


def check_limit(limit: int | float | None) -> int | float | None:
    """A task limit as lm-eval reads it: a count of at least 1, or a fraction
    in (0, 1) (lm-eval would read a float of 1 or more as a count, cutting
    1.5 to 1 example)."""
    if limit is None:
        return limit
    if isinstance(limit, int):
        if limit < 1:
            raise ValueError(f"limit must be at least 1 example (or a fraction in (0, 1)), not {limit}")
        return limit
    if not math.isfinite(limit) or not 0 < limit < 1:
        raise ValueError(f"limit {limit} is neither a whole number of examples nor a fraction in (0, 1)")
    return limit


class TaskSpec(Params):
    name: str = Field(..., description="lm-eval task, group or preset name ('leaderboard')")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples; None = the task's default")
    limit: int | float | None = Field(None, description=f"{LIMIT_DESCRIPTION} (overrides the stage's limit)")

    @field_validator("limit")
    @classmethod
    def _check_limit(cls, v: int | float | None) -> int | float | None:
        return check_limit(v)


class GenerationParams(Params):
    prompts: list[str] = Field(..., min_length=1, description="prompts to complete; the completions go into the report")
    max_new_tokens: int = Field(64, ge=1, description="tokens to generate per sample")
    do_sample: bool = Field(
        True,
        description="sample (temperature, top-k / top-p, repetition penalty below), seeded with the recipe's seed so "
        "a run repeats bit for bit; false: greedy decoding (one completion per prompt)",
    )
    num_samples: int | None = Field(
        None,
        ge=1,
        description="completions per prompt; default 3 when sampling, 1 for greedy decoding (which gives the same "
        "completion every time)",
    )
    temperature: float = Field(0.8, gt=0, allow_inf_nan=False, description="sampling temperature")
    top_k: int | None = Field(
        None,
        ge=0,
        description="sample from the k most likely tokens; 0: no top-k cut; None: the model's generation config, "
        "else transformers' 50",
    )
    top_p: float | None = Field(
        0.95,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="nucleus sampling: the smallest set of tokens with this probability mass; None: the model's "
        "generation config, else 1.0 (no cut)",
    )
    repetition_penalty: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description=">1 discourages repeating tokens (CTRL penalty); None: 1.2 when sampling, off (1.0) for "
        "greedy decoding",
    )

    @model_validator(mode="after")
    def _greedy_gives_one_sample(self) -> GenerationParams:
        if not self.do_sample and (self.num_samples or 1) > 1:
            raise ValueError(
                f"num_samples {self.num_samples} with do_sample false: greedy decoding gives the same completion "
                "every time; sample (do_sample: true) or leave num_samples out"
            )
        return self


class EvalParams(Params):
    perplexity: bool = Field(True, description="compute perplexity when a `dataset` input is connected")
    split: str | None = Field(
        None, description="dataset split for perplexity; default 'validation', else 'test' ('train' only when named)"
    )
    text_column: str = Field("text", description="text column of a (text) dataset input")
    block_size: int | None = Field(
        None,
        ge=2,
        description="row length when a text or tokenized dataset is cut into blocks for perplexity; default "
        "min(max_position_embeddings, 1024). Packed datasets keep their rows",
    )
    max_eval_samples: int | None = Field(None, ge=1, description="cap on rows scored for perplexity")
    batch_size: int = Field(
        8,
        ge=1,
        description="batch size for perplexity and lm-eval (part of the stage's key: a batch's float sums, and "
        "lm-eval's padding, change the last digits of the numbers)",
    )
    tasks: list[str | TaskSpec] = Field(
        default_factory=list,
        description="lm-eval tasks: names, {name, num_fewshot, limit} entries, or the preset 'leaderboard' "
        "(arc_challenge 25-shot, hellaswag 10, mmlu 5, truthfulqa_mc2 0, winogrande 5, gsm8k 5; needs the hub). "
        "Offline tasks shipped with the project: truthfulqa_mc2_local, truthfulqa_mc1_local, openbookqa_local. "
        "A multiple-choice prompt longer than the model's positions is cut from the left, as lm-eval does, and "
        "counted in <task>/truncated_requests; an answer that alone does not fit is refused",
    )
    limit: int | float | None = Field(None, description=f"{LIMIT_DESCRIPTION}. For quick checks")
    include_path: list[str] = Field(
        default_factory=list,
        description="extra directories of lm-eval task YAMLs; one holding Python (`!function`) runs it, so a "
        "recipe naming one outside an installed package needs `recipe run --trust-code`",
    )
    bootstrap_iters: int = Field(1000, ge=0, description="lm-eval bootstrap iterations for stderr of non-mean metrics")
    generation: GenerationParams | None = Field(
        None, description="sample generations for given prompts (sampled and seeded by default; see its fields)"
    )
    precision: Precision = Field("auto", description="bf16 where the device has it, else fp32")
    device: Device = Field("auto", description="cpu, cuda or auto")
    cpu_threads: int | None = cpu_threads_field()
    judge: JudgeParams | None = Field(
        None,
        description="LLM judge: score each response 0-100 against the reference answer, or compare this "
        "model's responses with the `baseline` input's (asked in both orders). The judge model is judge.model, "
        "judge.endpoint, or the `judge_model` input",
    )

    @field_validator("limit")
    @classmethod
    def _check_limit(cls, v: int | float | None) -> int | float | None:
        return check_limit(v)
