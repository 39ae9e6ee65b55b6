"""``recipe serve``: an OpenAI-compatible HTTP server on FastAPI and uvicorn.

Endpoints: ``GET /v1/models`` (and ``/v1/models/{id}``), ``POST
/v1/completions``, ``POST /v1/chat/completions`` (both with ``stream``:
server-sent events ``data: {...}`` ending with ``data: [DONE]``) and ``GET
/health``.  One model is loaded; requests are served one generation at a
time (the generator's lock), so concurrent requests queue and never mix.
:class:`OpenAIService` does the work and knows no web framework;
:func:`create_app` puts it behind FastAPI.

(No ``from __future__ import annotations`` here: FastAPI reads the route
functions' annotations, and those name classes imported inside functions.)"""

import importlib.util
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from .generation import GenerationError, Prompt, Sampling, Stream, TextGenerator
from .models import AppError
from .openai_schema import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    Response,
    SamplingRequest,
    delta_choice,
    message_choice,
    model_card,
    parse_request,
    sse,
    text_choice,
)

#: a reply: a JSON body, or the server-sent events of a stream
Reply = dict[str, Any] | Iterator[str]


def require_server_stack() -> None:
    """FastAPI and uvicorn are an extra: say how to install them (before a model is loaded)."""
    if any(importlib.util.find_spec(name) is None for name in ("fastapi", "uvicorn")):
        raise AppError('recipe serve needs FastAPI and uvicorn: pip install "recipe-runner[serve]"')


class OpenAIService:
    """The OpenAI endpoints over one :class:`TextGenerator`: ``defaults`` are
    the sampling settings of a request that sets none."""

    def __init__(self, generator: TextGenerator, defaults: Sampling):
        self.generator, self.defaults = generator, defaults
        self.model_id = generator.name
        self.created = int(time.time())

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [model_card(self.model_id, self.created)]}

    def model(self, model_id: str) -> dict[str, Any]:
        self._check_model(model_id)
        return model_card(self.model_id, self.created)

    def completions(self, body: bytes) -> Reply:
        req: CompletionRequest = parse_request(CompletionRequest, body)
        return self._respond(req, list(req.prompt), req.max_tokens, chat=False)

    def chat_completions(self, body: bytes) -> Reply:
        req: ChatRequest = parse_request(ChatRequest, body)
        messages = [m.as_message() for m in req.messages]
        return self._respond(req, [messages], req.max_completion_tokens or req.max_tokens, chat=True)

    def _respond(self, req: SamplingRequest, prompts: list[Prompt], max_tokens: int | None, chat: bool) -> Reply:
        """The whole response, or (``stream``) its events: one choice per prompt and ``n``."""
        streams = self._streams(req, prompts, max_tokens)
        response = Response.new("chatcmpl" if chat else "cmpl", self.model_id)
        if req.stream:
            return self._events(streams, req, response, chat)
        choice = message_choice if chat else text_choice
        choices = [choice(i, s.text(), s.usage.finish_reason) for i, s in enumerate(streams)]
        return response.body("chat.completion" if chat else "text_completion", choices, [s.usage for s in streams])

    def _check_model(self, model_id: str) -> None:
        if model_id != self.model_id:
            raise ApiError(
                404,
                f"The model '{model_id}' does not exist: this server serves '{self.model_id}' (GET /v1/models)",
                param="model",
                code="model_not_found",
            )

    def _streams(self, req: SamplingRequest, prompts: list[Prompt], max_tokens: int | None) -> list[Stream]:
        """One stream per prompt and choice, all checked before any generates;
        a request's seed seeds its first generation (the rest follow on)."""
        self._check_model(req.model)
        sampling = self.defaults.with_options(
            max_new_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            repetition_penalty=req.repetition_penalty,
            seed=req.seed,
            stop=tuple(req.stop),
        )
        jobs = [prompt for prompt in prompts for _ in range(req.n)]
        try:
            return [
                self.generator.stream(p, sampling if i == 0 else replace(sampling, seed=None))
                for i, p in enumerate(jobs)
            ]
        except GenerationError as e:
            param = "messages" if isinstance(req, ChatRequest) else "prompt"
            raise ApiError(400, str(e), param=param, code=e.code) from None

    def _events(self, streams: list[Stream], req: SamplingRequest, response: Response, chat: bool) -> Iterator[str]:
        """The server-sent events of a streamed request, choice after choice;
        a chat choice opens with the assistant role and closes with an empty delta."""
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(index: int, text: str, finish: str | None) -> str:
            if chat:
                return sse(response.body(obj, [delta_choice(index, {"content": text} if text else {}, finish)]))
            return sse(response.body(obj, [text_choice(index, text, finish)]))

        try:
            for index, stream in enumerate(streams):
                if chat:
                    yield sse(response.body(obj, [delta_choice(index, {"role": "assistant", "content": ""}, None)]))
                yield from (chunk(index, piece, None) for piece in stream)
                yield chunk(index, "", stream.usage.finish_reason)
            if req.include_usage:
                yield sse(response.body(obj, [], [s.usage for s in streams]))
        except Exception as e:  # headers are sent: the error goes in the stream, as OpenAI does
            yield sse(ApiError(500, f"generation failed: {type(e).__name__}: {e}", kind="server_error").body())
        finally:
            for stream in streams:
                stream.close()
        yield sse("[DONE]")


def create_app(service: OpenAIService) -> Any:
    """The FastAPI application serving ``service``."""
    from fastapi import FastAPI

    from .. import __version__

    api = FastAPI(title="recipe-runner", version=__version__, docs_url=None, redoc_url=None)
    _add_error_handlers(api)
    _add_routes(api, service)
    return api


def _add_routes(api: Any, service: OpenAIService) -> None:
    from fastapi import Request, Response
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool

    async def reply(handler: Callable[[bytes], Reply], request: Request) -> Response:
        # generation blocks: it runs in the thread pool, and so does the reading of a stream
        result = await run_in_threadpool(handler, await request.body())
        if isinstance(result, dict):
            return JSONResponse(result)
        return StreamingResponse(_closing(result), media_type="text/event-stream")

    async def health() -> dict[str, str]:
        return {"status": "ok"}

    async def models() -> dict[str, Any]:
        return service.models()

    async def model(model_id: str) -> dict[str, Any]:
        return service.model(model_id)

    async def completions(request: Request) -> Response:
        return await reply(service.completions, request)

    async def chat_completions(request: Request) -> Response:
        return await reply(service.chat_completions, request)

    api.add_api_route("/health", health, methods=["GET"])
    api.add_api_route("/v1/models", models, methods=["GET"])
    api.add_api_route("/v1/models/{model_id:path}", model, methods=["GET"])
    api.add_api_route("/v1/completions", completions, methods=["POST"])
    api.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])


async def _closing(events: Iterator[str]) -> Any:
    """The events, read in the thread pool; a client that goes away closes
    them (which stops the generation and frees the model for the next request)."""
    from starlette.concurrency import iterate_in_threadpool

    try:
        async for event in iterate_in_threadpool(events):
            yield event
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()


def _add_error_handlers(api: Any) -> None:
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        err = exc if isinstance(exc, ApiError) else ApiError(500, "internal server error", kind="server_error")
        return JSONResponse(err.body(), status_code=err.status)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal server error"
        return JSONResponse(ApiError(status, f"{detail}: {request.method} {request.url.path}").body(), status)

    api.add_exception_handler(ApiError, api_error)
    api.add_exception_handler(HTTPException, http_error)
    api.add_exception_handler(Exception, api_error)


def serve(service: OpenAIService, host: str, port: int) -> None:
    """Serve until interrupted."""
    import uvicorn

    uvicorn.run(create_app(service), host=host, port=port, log_level="info")
