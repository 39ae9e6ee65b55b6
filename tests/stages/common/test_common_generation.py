"""common/generation.py: the one generation path; greedy decoding checked
against a manual argmax loop, left padding, seeded sampling, prompts cut to
the context, new tokens only."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from recipe_runner_stages.common.generation import (
    GenerationSettings,
    SpecialTokens,
    generate_ids,
    generate_texts,
    left_pad,
)

PROMPTS = ["I had always thought Jack Gisburn", "The picture", "Mrs. Stroud said that he was", "Yes"]


def _argmax_continuation(model: Any, ids: list[int], n: int, eos: int) -> list[int]:
    """Greedy decoding by hand: the full sequence through the model, argmax of the last logits, n times."""
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([ids + out])).logits
            out.append(int(logits[0, -1].argmax()))
            if out[-1] == eos:
                break
    return out


def test_left_pad_right_aligns_the_rows() -> None:
    ids, mask = left_pad([[5, 6, 7], [8], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long


def test_special_tokens_pad_with_eos_when_there_is_no_pad(tiny_tokenizer: Any) -> None:
    assert SpecialTokens.of(tiny_tokenizer) == SpecialTokens(pad=3, eos=2, bos=1)

    class _NoPad:
        pad_token_id, eos_token_id, bos_token_id = None, 2, None

    assert SpecialTokens.of(_NoPad()) == SpecialTokens(pad=2, eos=2, bos=None)


def test_greedy_is_the_argmax_loop_also_in_left_padded_batches(tiny_lm: Any, tiny_tokenizer: Any) -> None:
    special = SpecialTokens.of(tiny_tokenizer)
    prompts = [tiny_tokenizer(p)["input_ids"] for p in PROMPTS]
    assert len({len(p) for p in prompts}) > 1  # the batch needs padding
    batched = generate_ids(tiny_lm, prompts, GenerationSettings(max_new_tokens=10), special, batch_size=4)
    for prompt, new in zip(prompts, batched, strict=True):
        expected = _argmax_continuation(tiny_lm, prompt, 10, special.eos)
        assert new[: len(expected)] == expected
        assert all(t == special.pad for t in new[len(expected) :])  # a row that ended is padded


def test_sampling_with_a_seed_is_reproducible(tiny_lm: Any, tiny_tokenizer: Any) -> None:
    settings = GenerationSettings(max_new_tokens=12, do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    first = generate_texts(tiny_lm, tiny_tokenizer, PROMPTS, settings, batch_size=2, seed=7)
    again = generate_texts(tiny_lm, tiny_tokenizer, PROMPTS, settings, batch_size=2, seed=7)
    other = generate_texts(tiny_lm, tiny_tokenizer, PROMPTS, settings, batch_size=2, seed=8)
    greedy = generate_texts(tiny_lm, tiny_tokenizer, PROMPTS, GenerationSettings(max_new_tokens=12), batch_size=2)
    assert first == again
    assert first != other
    assert first != greedy


def test_texts_are_the_decoded_new_tokens_only(tiny_lm: Any, tiny_tokenizer: Any) -> None:
    settings = GenerationSettings(max_new_tokens=8)
    texts = generate_texts(tiny_lm, tiny_tokenizer, PROMPTS, settings, batch_size=3)
    prompts = [tiny_tokenizer(p)["input_ids"] for p in PROMPTS]
    new = generate_ids(tiny_lm, prompts, settings, SpecialTokens.of(tiny_tokenizer), batch_size=3)
    assert texts == [tiny_tokenizer.decode(n, skip_special_tokens=True) for n in new]
    assert all(len(n) <= 8 for n in new)
    assert generate_texts(tiny_lm, tiny_tokenizer, [], settings) == []


def test_a_prompt_longer_than_the_context_is_cut_from_the_left(
    tiny_lm: Any, tiny_tokenizer: Any, data_dir: Any
) -> None:
    text = (data_dir / "the-verdict.txt").read_text()[:6000]
    ids = tiny_tokenizer(text)["input_ids"]
    assert len(ids) > 256  # the tiny model's context
    settings = GenerationSettings(max_new_tokens=6)
    [cut] = generate_ids(tiny_lm, [ids[-250:]], settings, SpecialTokens.of(tiny_tokenizer))
    assert generate_texts(tiny_lm, tiny_tokenizer, [text], settings) == [
        tiny_tokenizer.decode(cut, skip_special_tokens=True)
    ]


def test_settings_map_onto_a_generation_config(tiny_tokenizer: Any) -> None:
    special = SpecialTokens.of(tiny_tokenizer)
    greedy = GenerationSettings(max_new_tokens=5, temperature=0.5, top_k=3).generation_config(special)
    assert (greedy.do_sample, greedy.temperature, greedy.top_k, greedy.max_new_tokens) == (False, None, None, 5)
    assert (greedy.pad_token_id, greedy.eos_token_id, greedy.bos_token_id) == (3, 2, 1)
    sample = GenerationSettings(do_sample=True, temperature=0.5, top_k=3, top_p=0.9, repetition_penalty=1.2)
    cfg = sample.generation_config(special)
    assert (cfg.do_sample, cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty) == (True, 0.5, 3, 0.9, 1.2)


@pytest.mark.parametrize("penalty", [None, 1.0])
def test_no_repetition_penalty_is_plain_greedy(tiny_lm: Any, tiny_tokenizer: Any, penalty: float | None) -> None:
    plain = generate_texts(tiny_lm, tiny_tokenizer, PROMPTS, GenerationSettings(max_new_tokens=8))
    with_penalty = GenerationSettings(max_new_tokens=8, repetition_penalty=penalty)
    assert generate_texts(tiny_lm, tiny_tokenizer, PROMPTS, with_penalty) == plain
