"""The judge itself, a callable from prompts to answers: a local causal LM
(run with transformers) or an OpenAI-compatible chat-completions endpoint."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from recipe_runner import StageError

from ...common.models import load_for_inference
from ...common.prompts import chat_prompt
from .params import EndpointParams, JudgeParams
from .responses import greedy_texts

Judge = Callable[[list[str]], list[str]]

#: HTTP statuses worth a retry (besides every 5xx)
_RETRIED_STATUSES = (408, 429)


class LocalJudge:
    """A causal LM answering each prompt greedily (in its chat template when
    ``use_chat_template`` and it has one)."""

    def __init__(self, p: JudgeParams, path: str):
        self.p = p
        self.model, self.tok = load_for_inference(path, p.device, p.precision)

    def __call__(self, prompts: list[str]) -> list[str]:
        if self.p.use_chat_template and getattr(self.tok, "chat_template", None):
            prompts = [chat_prompt(self.tok, q) for q in prompts]
        else:
            prompts = [q + "\n\n" for q in prompts]
        return greedy_texts(self.model, self.tok, prompts, self.p.max_new_tokens, self.p.batch_size)


class EndpointJudge:
    """An OpenAI-compatible chat-completions endpoint, one request per prompt
    (temperature 0), retried on connection errors, timeouts, 408/429 and 5xx."""

    def __init__(self, endpoint: EndpointParams, max_new_tokens: int):
        self.e = endpoint
        self.max_new_tokens = max_new_tokens
        self.url = endpoint.base_url.rstrip("/") + "/chat/completions"
        self.key = None
        if endpoint.api_key_env:
            self.key = os.environ.get(endpoint.api_key_env)
            if not self.key:
                raise StageError(
                    f"judge endpoint: the environment variable {endpoint.api_key_env!r} "
                    f"(endpoint.api_key_env) is not set; export the API key there"
                )

    def __call__(self, prompts: list[str]) -> list[str]:
        return [self._answer(q) for q in prompts]

    def _answer(self, prompt: str) -> str:
        body = json.dumps(
            {
                "model": self.e.model,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": 0,
                "max_tokens": self.max_new_tokens,
            }
        ).encode()
        last: Exception | None = None
        for attempt in range(self.e.max_retries + 1):
            try:
                return self._post(body)
            except urllib.error.HTTPError as e:
                last = e
                if e.code not in _RETRIED_STATUSES and e.code < 500:
                    raise StageError(f"judge endpoint {self.url}: HTTP {e.code}: {e.read()[:300]!r}") from e
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = e
            except (KeyError, IndexError, ValueError) as e:
                raise StageError(f"judge endpoint {self.url}: unexpected answer (not a chat completion): {e}") from e
            time.sleep(min(8.0, 0.5 * 2**attempt))
        raise StageError(f"judge endpoint {self.url}: no answer after {self.e.max_retries + 1} tries: {last}")

    def _post(self, body: bytes) -> str:
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.e.timeout_s) as r:
            data = json.loads(r.read().decode())
        return str(data["choices"][0]["message"]["content"] or "")


def make_judge(p: JudgeParams, model_path: str | None = None) -> Judge:
    """The judge callable (prompts -> answers): the endpoint, ``p.model``, or
    ``model_path`` (e.g. the eval stage's judge_model input)."""
    if p.endpoint is not None:
        return EndpointJudge(p.endpoint, p.max_new_tokens)
    path = p.model or model_path
    if not path:
        raise StageError(
            "judge: no judge model: set judge.model (a local dir or hub id), judge.endpoint, or "
            "connect a judge_model input"
        )
    return LocalJudge(p, path)
