"""The eval stage's sample generations: every prompt completed
``num_samples`` times, sampled (temperature, top-p, repetition penalty) with
the recipe's seed so that a run repeats bit for bit, or once greedily; for
``report.json``, ``report.md``, the run report and the model card."""

from __future__ import annotations

from typing import Any

from recipe_runner import StageContext

from ..common.generation import GenerationSettings, generate_texts
from .params import EvalParams, GenerationParams

#: completions per prompt when sampling and the recipe does not say
DEFAULT_SAMPLES = 3

#: the repetition penalty of sampling when the recipe does not set one (greedy decoding has none)
SAMPLING_REPETITION_PENALTY = 1.2


def samples_per_prompt(g: GenerationParams) -> int:
    """``num_samples``, else 3 when sampling and 1 for greedy decoding."""
    if g.num_samples is not None:
        return g.num_samples
    return DEFAULT_SAMPLES if g.do_sample else 1


def decoding_settings(g: GenerationParams) -> GenerationSettings:
    """How the eval stage chooses tokens: ``g``'s settings, with the
    repetition penalty resolved (1.2 when sampling, off for greedy decoding,
    unless set)."""
    penalty = g.repetition_penalty
    if penalty is None and g.do_sample:
        penalty = SAMPLING_REPETITION_PENALTY
    return GenerationSettings(
        max_new_tokens=g.max_new_tokens,
        do_sample=g.do_sample,
        temperature=g.temperature,
        top_k=g.top_k,
        top_p=g.top_p,
        repetition_penalty=penalty,
    )


def sample_generations(
    ctx: StageContext[EvalParams], model: Any, tokenizer: Any, g: GenerationParams
) -> dict[str, Any]:
    """The report's ``samples`` (prompt, sample number, completion: the
    samples of a prompt one after the other) and ``generation`` (the settings
    as used, with the seed).  Prompts are generated one at a time: batching
    them with left padding can change even a greedy completion."""
    n = samples_per_prompt(g)
    settings = decoding_settings(g)
    prompts = [q for q in g.prompts for _ in range(n)]
    with ctx.progress("generate", total=len(prompts)) as bar:
        completions = generate_texts(
            model,
            tokenizer,
            prompts,
            settings,
            batch_size=1,
            add_special_tokens=True,
            seed=ctx.seed,
            progress=bar.advance,
        )
    samples: list[dict[str, Any]] = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        samples.append({"prompt": prompt, "sample": i % n + 1, "completion": completion})
        ctx.log.info("sample %d: %r -> %r", i % n + 1, prompt, completion[:200])
    used = {**g.model_dump(), "num_samples": n, "repetition_penalty": settings.repetition_penalty, "seed": ctx.seed}
    return {"samples": samples, "generation": used}
