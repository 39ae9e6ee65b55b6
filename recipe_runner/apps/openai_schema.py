"""The part of OpenAI's HTTP API that ``recipe serve`` speaks: the request
bodies of ``/v1/completions`` and ``/v1/chat/completions`` (validated: a bad
one is a 400 naming the parameter), the response and streamed-chunk bodies,
and the error body ``{"error": {"message", "type", "param", "code"}}``.

Beyond OpenAI's parameters, ``top_k`` and ``repetition_penalty`` are accepted
(as vLLM does).  Parameters this server cannot honour (logprobs, penalties,
logit bias, tools) are refused rather than ignored."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from .generation import Message, Usage


class ApiError(Exception):
    """An error answered in OpenAI's shape, with its HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _text_list(value: Any) -> Any:
    """A completion prompt: one string or a list of strings."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise ValueError("must be a string or a non-empty list of strings")


def _content_text(value: Any) -> Any:
    """A message's content: a string, or a list of text parts (joined by newlines)."""
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "\n".join(str(p.get("text", "")) for p in value)
    raise ValueError("must be a string or a list of text parts ({'type': 'text', 'text': ...})")


def _stop_list(value: Any) -> Any:
    if value is None:
        return []
    return [value] if isinstance(value, str) else value


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = False


class SamplingRequest(BaseModel):
    """What both endpoints take: the model, how many tokens, how to sample,
    streaming.  Strict: a value of the wrong JSON type is an error, not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    seed: int | None = None
    stop: Annotated[list[str], BeforeValidator(_stop_list)] = Field(default_factory=list, max_length=8)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # accepted only at their "off" value: this server cannot honour them
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool | int | None = None
    logit_bias: dict[str, float] | None = None

    @field_validator("presence_penalty", "frequency_penalty", "logprobs", "logit_bias")
    @classmethod
    def _off(cls, value: Any) -> Any:
        if value:
            raise ValueError("not supported by this server (leave it unset)")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(SamplingRequest):
    prompt: Annotated[list[str], BeforeValidator(_text_list)]
    echo: bool = False
    suffix: str | None = None

    @field_validator("echo", "suffix")
    @classmethod
    def _unsupported(cls, value: Any) -> Any:
        if value:
            raise ValueError("not supported by this server (leave it unset)")
        return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, BeforeValidator(_content_text)] = ""
    name: str | None = None

    def as_message(self) -> Message:
        """The turn as a chat template takes it ('developer' is the newer name of 'system')."""
        return {"role": "system" if self.role == "developer" else self.role, "content": self.content}


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


def parse_request(model: type[SamplingRequest], body: bytes) -> Any:
    """The validated request, or an ApiError (400) naming the first bad parameter."""
    try:
        data = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _invalid(e) from None


def _invalid(error: ValidationError) -> ApiError:
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    param = ".".join(loc) or None
    if first["type"] == "missing":
        message = f"'{param}' is required"
    elif first["type"] == "extra_forbidden":
        message = f"unsupported parameter '{param}'"
    else:
        got = json.dumps(first["input"])
        got = got if len(got) <= 80 else got[:77] + "..."
        message = f"'{param}': {first['msg'].removeprefix('Value error, ')} (got {got})"
    return ApiError(400, message, param=param, code=None)


def usage_body(usages: list[Usage]) -> dict[str, int]:
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def model_card(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "recipe-runner"}


@dataclass(frozen=True)
class Response:
    """What every body (and every chunk) of one response repeats: its id, its
    creation time and the model."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, prefix: str, model: str) -> Response:
        return cls(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model)

    def body(self, obj: str, choices: list[dict[str, Any]], usages: list[Usage] | None = None) -> dict[str, Any]:
        """A response body (or chunk) of type ``obj``, with the usage summed over ``usages`` when given."""
        body = {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}
        if usages is not None:
            body["usage"] = usage_body(usages)
        return body


def text_choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    """A /v1/completions choice (or the piece of one in a chunk)."""
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


def message_choice(index: int, text: str, finish_reason: str) -> dict[str, Any]:
    """A /v1/chat/completions choice: the assistant's message."""
    message = {"role": "assistant", "content": text}
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}


def delta_choice(index: int, delta: dict[str, str], finish_reason: str | None) -> dict[str, Any]:
    """A chat chunk's choice: what the message gained."""
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event: ``data: {...}`` and a blank line."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
