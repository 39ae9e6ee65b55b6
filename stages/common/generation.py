"""Text generation with a causal LM, the one path every stage uses (eval's
sample generations, the judge's responses and verdicts, sft's samples,
quantize's before/after sample, PPO's rollouts).

Prompts are batched with left padding (the new tokens of every row then start
in the same column), generated with one :class:`GenerationSettings` (greedy,
or sampling with temperature / top-k / top-p), and only the new tokens are
returned.  The special token ids come from the tokenizer: its pad token pads
(EOS when it has none) and its EOS ends a row."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .models import max_positions

if TYPE_CHECKING:
    import torch

ProgressCallback = Callable[[int], object]  # called with the number of prompts just done


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids generation needs: padding, end of sequence, beginning of sequence."""

    pad: int | None
    eos: int | None
    bos: int | None = None

    @classmethod
    def of(cls, tokenizer: Any) -> SpecialTokens:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return cls(pad=pad, eos=tokenizer.eos_token_id, bos=tokenizer.bos_token_id)


@dataclass(frozen=True)
class GenerationSettings:
    """How new tokens are chosen.  Greedy unless ``do_sample``; temperature,
    top_k and top_p apply to sampling only (None: the model's generation
    config, else transformers' default).  A repetition penalty of None or 1.0
    is off."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    min_new_tokens: int | None = None

    def generation_config(self, special: SpecialTokens) -> Any:
        """The ``transformers.GenerationConfig`` of these settings."""
        from transformers import GenerationConfig

        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens,
            do_sample=self.do_sample,
            temperature=self.temperature if self.do_sample else None,
            top_k=self.top_k if self.do_sample else None,
            top_p=self.top_p if self.do_sample else None,
            repetition_penalty=self.repetition_penalty,
            pad_token_id=special.pad,
            eos_token_id=special.eos,
            bos_token_id=special.bos,
            use_cache=True,
        )


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows right-aligned in one tensor: (input_ids, attention_mask),
    padding on the left."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.as_tensor(list(row), dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


def generate_ids(
    model: Any,
    prompts: Sequence[Sequence[int]],
    settings: GenerationSettings,
    special: SpecialTokens,
    *,
    batch_size: int = 8,
    seed: int | None = None,
    progress: ProgressCallback | None = None,
) -> list[list[int]]:
    """The new token ids generated after each prompt (token ids).  A row that
    ends before the longest row of its batch is padded with ``special.pad``.
    ``seed`` seeds torch once before the first batch (sampling)."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    if special.pad is None:
        raise ValueError("generation needs a pad token id (or an EOS token id to pad with)")
    device = next(model.parameters()).device
    config = settings.generation_config(special)
    new_tokens: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        ids, mask = left_pad(chunk, special.pad)
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        new_tokens.extend(out[:, ids.shape[1] :].tolist())
        if progress is not None:
            progress(len(chunk))
    return new_tokens


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    settings: GenerationSettings,
    *,
    batch_size: int = 8,
    add_special_tokens: bool = False,
    seed: int | None = None,
    progress: ProgressCallback | None = None,
) -> list[str]:
    """The text generated after each prompt (new tokens only, special tokens
    dropped, not stripped).  Prompts are cut from the left so that prompt and
    ``max_new_tokens`` fit the model's context; ``add_special_tokens`` adds
    the tokenizer's own (e.g. BOS) when encoding them."""
    if not prompts:
        return []
    context = max_positions(model) or 10**9
    keep = max(1, context - settings.max_new_tokens)
    encoded = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    new_tokens = generate_ids(
        model,
        [ids[-keep:] for ids in encoded],
        settings,
        SpecialTokens.of(tokenizer),
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    texts: list[str] = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return texts
