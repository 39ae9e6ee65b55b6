"""Streaming generation: stop strings, the context limit, a chat prompt on
a base model, and closing a stream mid-way (which must stop the generation
and free the model for the next caller)."""

from __future__ import annotations

import pytest

from recipe_runner.apps.generation import GenerationError, HFGenerator, Sampling, Stream, Usage
from recipe_runner.apps.models import load_generator, source_from_path


@pytest.fixture(scope="module")
def base_generator(built_run):
    return load_generator(source_from_path(built_run.base_model), device="cpu")


def _pieces(*pieces: str):
    yield from pieces


def test_a_stop_string_split_across_pieces_ends_the_text_before_it():
    stream = Stream(_pieces("ab", "c<|e", "nd|>", "never"), Usage(finish_reason="length"), stop=["<|end|>"])

    assert list(stream) == ["ab", "c"]
    assert stream.usage.finish_reason == "stop"


def test_a_held_back_prefix_that_is_no_stop_string_is_released():
    stream = Stream(_pieces("ab<", "|x", "y<"), Usage(), stop=["<|end|>"])

    assert stream.text() == "ab<|xy<"


def test_greedy_generation_reports_its_tokens_and_why_it_ended(base_generator, base_lm, greedy_completion):
    prompt = "I HAD always thought Jack Gisburn"
    stream = base_generator.stream(prompt, Sampling(max_new_tokens=12, greedy=True))

    assert stream.text() == greedy_completion(base_lm, prompt, 12)
    assert stream.usage.prompt_tokens == len(base_lm[1](prompt)["input_ids"])
    assert stream.usage.completion_tokens <= 12
    assert stream.usage.finish_reason == ("length" if stream.usage.completion_tokens == 12 else "stop")


def test_closing_a_stream_stops_the_generation_and_frees_the_model(built_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(built_run.base_model)).eval()
    model.generation_config.eos_token_id = None  # no early end: left alone, it runs to the limit
    generator = HFGenerator(model, AutoTokenizer.from_pretrained(str(built_run.base_model)), "no-eos")
    finished = generator.stream("He was", Sampling(max_new_tokens=200, greedy=True))
    finished.text()
    assert finished.usage.completion_tokens == 200

    stream = generator.stream("He was", Sampling(max_new_tokens=200, greedy=True))
    next(iter(stream))
    stream.close()

    assert 0 < stream.usage.completion_tokens < 200
    assert not generator._lock.locked()


def test_a_prompt_too_long_for_the_context_is_refused_or_cut(base_generator):
    prompt = "word " * 300
    with pytest.raises(GenerationError, match="maximum context length is 256 tokens") as caught:
        base_generator.stream(prompt, Sampling(max_new_tokens=8, greedy=True))
    assert caught.value.code == "context_length_exceeded"

    cut = base_generator.stream(prompt, Sampling(max_new_tokens=8, greedy=True), truncate=True)
    cut.text()
    assert cut.usage.prompt_tokens == 256 - 8


def test_chat_messages_need_a_chat_template(base_generator):
    assert not base_generator.chat_template
    with pytest.raises(GenerationError, match="has no chat template"):
        base_generator.stream([{"role": "user", "content": "hi"}], Sampling())
