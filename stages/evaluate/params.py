"""The ``eval`` stage's parameters."""

from __future__ import annotations

from pydantic import Field

from recipe_runner import Params

from ..common.devices import Device, Precision, cpu_threads_field
from .judge.params import JudgeParams


class TaskSpec(Params):
    name: str = Field(..., description="lm-eval task, group or preset name ('leaderboard')")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples; None = the task's default")
    limit: int | float | None = Field(None, gt=0, description="examples of this task (overrides the stage's limit)")


class GenerationParams(Params):
    prompts: list[str] = Field(..., min_length=1, description="prompts to complete; the completions go into the report")
    max_new_tokens: int = Field(64, ge=1, description="tokens to generate per prompt")
    do_sample: bool = Field(False, description="sample (with the settings below) instead of greedy decoding")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_k: int | None = Field(None, ge=1, description="sample from the k most likely tokens")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling: smallest set with this mass")
    repetition_penalty: float = Field(1.0, gt=0, description=">1 discourages repeating tokens (CTRL penalty)")


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
    batch_size: int = Field(8, ge=1, description="batch size for perplexity and lm-eval")
    tasks: list[str | TaskSpec] = Field(
        default_factory=list,
        description="lm-eval tasks: names, {name, num_fewshot, limit} entries, or the preset 'leaderboard' "
        "(arc_challenge 25-shot, hellaswag 10, mmlu 5, truthfulqa_mc2 0, winogrande 5, gsm8k 5; needs the hub). "
        "Offline tasks shipped with the project: truthfulqa_mc2_local, truthfulqa_mc1_local, openbookqa_local",
    )
    limit: int | float | None = Field(
        None, gt=0, description="examples per task (an int) or fraction (< 1); None = all. For quick checks"
    )
    include_path: list[str] = Field(default_factory=list, description="extra directories of lm-eval task YAMLs")
    bootstrap_iters: int = Field(1000, ge=0, description="lm-eval bootstrap iterations for stderr of non-mean metrics")
    generation: GenerationParams | None = Field(None, description="sample generations for given prompts")
    precision: Precision = Field("auto", description="bf16 where the device has it, else fp32")
    device: Device = Field("auto", description="cpu, cuda or auto")
    cpu_threads: int | None = cpu_threads_field()
    judge: JudgeParams | None = Field(
        None,
        description="LLM judge: score each response 0-100 against the reference answer, or compare this "
        "model's responses with the `baseline` input's (asked in both orders). The judge model is judge.model, "
        "judge.endpoint, or the `judge_model` input",
    )
