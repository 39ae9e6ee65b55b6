"""`recipe serve` on the tiny recipe's sft stage (base + LoRA), driven by the
official `openai` client against the live server on 127.0.0.1."""

from __future__ import annotations

import json
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

QUESTION = "Name a color."


@pytest.fixture(scope="module")
def client(served_adapter):
    return openai.OpenAI(base_url=served_adapter.base_url, api_key="unused", timeout=120, max_retries=0)


def test_models_lists_the_served_stage(client, served_adapter):
    models = client.models.list()

    assert [m.id for m in models.data] == [served_adapter.model_id]
    assert client.models.retrieve(served_adapter.model_id).owned_by == "recipe-runner"


def test_completion_is_a_plain_greedy_generate_of_the_prompt(client, served_adapter, adapter_lm, greedy_completion):
    prompt = "I HAD always thought Jack Gisburn"
    response = client.completions.create(model=served_adapter.model_id, prompt=prompt, max_tokens=20, temperature=0)

    assert response.object == "text_completion"
    assert response.choices[0].text == greedy_completion(adapter_lm, prompt, 20)
    assert response.choices[0].finish_reason in ("stop", "length")
    expected_prompt_tokens = len(adapter_lm[1](prompt)["input_ids"])
    assert response.usage.prompt_tokens == expected_prompt_tokens
    assert response.usage.total_tokens == expected_prompt_tokens + response.usage.completion_tokens


def test_chat_completion_uses_the_chat_template_and_streams_the_same_text(
    client, served_adapter, adapter_lm, greedy_chat
):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    reply = client.chat.completions.create(
        model=served_adapter.model_id, messages=messages, max_tokens=24, temperature=0
    )
    chunks = list(
        client.chat.completions.create(
            model=served_adapter.model_id,
            messages=messages,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    text = reply.choices[0].message.content
    assert text == greedy_chat(adapter_lm, messages, 24)
    assert reply.choices[0].message.role == "assistant"
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == text
    assert chunks[-2].choices[0].finish_reason == reply.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert all(c.id == chunks[0].id and c.object == "chat.completion.chunk" for c in chunks)


def test_completion_stream_ends_with_done_and_concatenates_to_the_full_text(client, served_adapter):
    prompt = "the height of his glory"
    full = client.completions.create(model=served_adapter.model_id, prompt=prompt, max_tokens=16, temperature=0)
    url = f"{served_adapter.base_url}/completions"
    body = {"model": served_adapter.model_id, "prompt": prompt, "max_tokens": 16, "temperature": 0, "stream": True}
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.read().decode().split("\n\n") if line]

    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    pieces = [json.loads(e.removeprefix("data: "))["choices"][0]["text"] for e in events[:-1]]
    assert "".join(pieces) == full.choices[0].text


def test_stop_strings_cut_the_text_before_them(client, served_adapter):
    prompt = "I HAD always thought Jack Gisburn"
    full = client.completions.create(model=served_adapter.model_id, prompt=prompt, max_tokens=24, temperature=0)
    text = full.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = client.completions.create(
        model=served_adapter.model_id, prompt=prompt, max_tokens=24, temperature=0, stop=[stop]
    )

    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_seeded_sampling_is_reproducible_per_request(client, served_adapter):
    def sample(seed: int) -> str:
        response = client.completions.create(
            model=served_adapter.model_id, prompt="I HAD", max_tokens=24, temperature=1.0, seed=seed
        )
        return response.choices[0].text

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)


@pytest.mark.parametrize(
    ("request_args", "param", "says"),
    [
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"messages": []}, "messages", "at least 1 item"),
        ({"temperature": "hot"}, "temperature", "valid number"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role", "'system', 'developer', 'user'"),
        ({"presence_penalty": 0.5}, "presence_penalty", "not supported by this server"),
        ({"extra_body": {"beam_width": 4}}, "beam_width", "unsupported parameter 'beam_width'"),
    ],
)
def test_a_bad_request_is_a_400_in_openai_error_shape(client, served_adapter, request_args, param, says):
    args = {"model": served_adapter.model_id, "messages": [{"role": "user", "content": QUESTION}], **request_args}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**args)

    error = caught.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert says in error["message"]
    assert says in str(caught.value)


def test_an_unknown_model_is_a_404_naming_the_served_one(client, served_adapter):
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="gpt-4o", prompt="hi", max_tokens=4)

    error = caught.value.response.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert f"this server serves '{served_adapter.model_id}'" in error["message"]


def test_a_prompt_longer_than_the_context_is_a_400(client, served_adapter):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=served_adapter.model_id, prompt="word " * 300, max_tokens=4)

    error = caught.value.response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "maximum context length is 256 tokens" in error["message"]


def test_concurrent_requests_are_each_answered_with_their_own_text(
    client, served_adapter, adapter_lm, greedy_chat, greedy_completion
):
    """Four requests at once (two streamed): served one generation at a time,
    each gets exactly what it gets alone."""
    prompts = ["I HAD always thought", "the height of his glory", "Name a color.", "Rewrite: the car is fast."]

    def ask(i: int) -> str:
        if i % 2:
            messages = [{"role": "user", "content": prompts[i]}]
            stream = client.chat.completions.create(
                model=served_adapter.model_id, messages=messages, max_tokens=20, temperature=0, stream=True
            )
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        response = client.completions.create(
            model=served_adapter.model_id, prompt=prompts[i], max_tokens=20, temperature=0
        )
        return response.choices[0].text

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(4)))

    expected = [
        greedy_chat(adapter_lm, [{"role": "user", "content": p}], 20) if i % 2 else greedy_completion(adapter_lm, p, 20)
        for i, p in enumerate(prompts)
    ]
    assert answers == expected
    assert len(set(answers)) > 1


def test_serve_without_fastapi_says_how_to_install_it(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from recipe_runner.cli import app

    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if not installed: find_spec gives None
    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path)])

    assert result.exit_code == 2
    assert 'pip install "recipe-runner[serve]"' in result.output
