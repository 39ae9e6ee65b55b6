"""Streaming text generation from a loaded model, for ``recipe chat`` and
``recipe serve``: a prompt (text, or chat messages rendered with the model's
chat template) and :class:`Sampling` settings in, a :class:`Stream` of text
pieces out, with the token counts and why it stopped.

Two back ends: transformers (``model.generate`` in a thread feeding a
``TextIteratorStreamer``) and llama.cpp (llama-cpp-python's streaming
completions) for GGUF files.  Each generator runs one generation at a time:
concurrent callers wait on its lock, so their outputs never mix."""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

Message = dict[str, str]
Prompt = str | list[Message]


class GenerationError(ValueError):
    """A request the model cannot serve as asked (a prompt longer than its
    context, chat messages for a model without a chat template): the caller's
    to fix.  ``code`` is the OpenAI error code, when one fits."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Sampling:
    """How new tokens are chosen.  Greedy when ``greedy`` or ``temperature``
    is 0; otherwise sampling with temperature, top-p and top-k (0: off).  A
    repetition penalty of 1.0 is off.  ``seed`` reseeds the random generator
    right before this generation; ``stop`` strings end it (they are not part
    of the text)."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    greedy: bool = False
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def sampled(self) -> bool:
        return not self.greedy and self.temperature > 0

    def with_options(self, **options: Any) -> Sampling:
        """These settings with every option that is not None replacing its field."""
        return replace(self, **{k: v for k, v in options.items() if v is not None})


@dataclass
class Usage:
    """Token counts of one generation and why it ended ('stop': an end-of-
    sequence token or a stop string; 'length': ``max_new_tokens`` reached)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"


class _StopScanner:
    """Cuts a text stream at the first stop string, holding back a tail that
    could be the start of one until the next piece tells."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.hit = False

    def feed(self, piece: str) -> str:
        self.pending += piece
        cuts = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.hit = True
            text, self.pending = self.pending[: min(cuts)], ""
            return text
        hold = max((n for s in self.stops for n in range(1, len(s)) if self.pending.endswith(s[:n])), default=0)
        text, self.pending = self.pending[: len(self.pending) - hold], self.pending[len(self.pending) - hold :]
        return text

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text


class Stream:
    """The text of one generation as it is produced: iterate it for the
    pieces, then read :attr:`usage`.  Generation starts on the first piece
    asked for (taking the generator's lock) and stops early when the stream
    is closed or a stop string appears."""

    def __init__(self, pieces: Generator[str, None, None], usage: Usage, stop: Sequence[str] = ()):
        self._pieces = pieces
        self._scanner = _StopScanner(stop)
        self.usage = usage

    def __iter__(self) -> Iterator[str]:
        try:
            for piece in self._pieces:
                text = self._scanner.feed(piece)
                if text:
                    yield text
                if self._scanner.hit:
                    return
            rest = self._scanner.flush()
            if rest:
                yield rest
        finally:
            self.close()

    def close(self) -> None:
        """Stop generating (the generator's lock is released)."""
        self._pieces.close()
        if self._scanner.hit:
            self.usage.finish_reason = "stop"

    def text(self) -> str:
        return "".join(self)


class TextGenerator:
    """A loaded model that streams text.  ``chat_template``: whether it can
    render chat messages (otherwise only text prompts); ``context_length``:
    prompt plus new tokens must fit (None: unknown)."""

    chat_template: bool = False
    context_length: int | None = None

    def __init__(self, name: str):
        self.name = name
        self._lock = threading.Lock()

    def stream(self, prompt: Prompt, sampling: Sampling, *, truncate: bool = False) -> Stream:
        """Start a generation (the prompt is checked now, tokens come when the
        stream is read).  ``truncate``: drop the oldest prompt tokens when the
        prompt is too long for the context instead of refusing it."""
        raise NotImplementedError

    def reseed(self, seed: int) -> None:
        """Seed the random generator sampling draws from."""
        raise NotImplementedError

    def fit(self, ids: list[int], max_new_tokens: int, truncate: bool) -> list[int]:
        """The prompt ids, checked (or cut from the left) against the context length."""
        if self.context_length is None or len(ids) + max_new_tokens <= self.context_length:
            return ids
        room = self.context_length - max_new_tokens
        if truncate and room >= 1:
            return ids[-room:]
        raise GenerationError(
            f"this model's maximum context length is {self.context_length} tokens, but {len(ids)} prompt tokens "
            f"and {max_new_tokens} new tokens were asked for; shorten the prompt or ask for fewer tokens",
            code="context_length_exceeded",
        )

    def no_chat_template(self) -> GenerationError:
        return GenerationError(
            f"model {self.name!r} has no chat template (a base model): send a text prompt instead "
            "(/v1/completions), or fine-tune it with a chat template (the sft stage's chat_template)"
        )


class HFGenerator(TextGenerator):
    """A transformers causal LM (a PEFT model included) and its tokenizer.
    Text prompts are encoded with the tokenizer's special tokens (BOS where
    it adds one), chat prompts rendered with its chat template (which holds
    the special tokens) and encoded without; both as transformers and vLLM do."""

    def __init__(self, model: Any, tokenizer: Any, name: str):
        super().__init__(name)
        self.model, self.tokenizer = model, tokenizer
        self.chat_template = bool(getattr(tokenizer, "chat_template", None))
        text_config = model.config.get_text_config()
        self.context_length = getattr(text_config, "max_position_embeddings", None)
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def stream(self, prompt: Prompt, sampling: Sampling, *, truncate: bool = False) -> Stream:
        with self._lock:  # a fast tokenizer must not be used from two threads at once
            ids = self.fit(self._encode(prompt), sampling.max_new_tokens, truncate)
        usage = Usage(prompt_tokens=len(ids))
        return Stream(self._generate(ids, sampling, usage), usage, sampling.stop)

    def reseed(self, seed: int) -> None:
        import torch

        torch.manual_seed(seed)

    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            ids = list(self.tokenizer(prompt)["input_ids"])
        else:
            if not self.chat_template:
                raise self.no_chat_template()
            try:
                text = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            except Exception as e:  # jinja's TemplateError and the template's own raise_exception()
                raise GenerationError(f"the model's chat template rejected the messages: {e}") from e
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if not ids and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id]
        if not ids:
            raise GenerationError("the prompt is empty")
        return ids

    def _generate_kwargs(self, sampling: Sampling) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "do_sample": sampling.sampled}
        if sampling.sampled:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        if sampling.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = sampling.repetition_penalty
        if self.pad_id is not None:
            kwargs["pad_token_id"] = self.pad_id
        return kwargs

    def _generate(self, ids: list[int], sampling: Sampling, usage: Usage) -> Generator[str, None, None]:
        """``model.generate`` in a thread, its text pieces as they come; closing
        this generator stops the generation after the current token."""
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        streamer: Any = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()
        new_ids: list[int] = []
        errors: list[BaseException] = []

        def cancelled(input_ids: torch.Tensor, scores: Any, **_: Any) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        def work() -> None:
            try:
                input_ids = torch.tensor([ids], device=self.model.device)
                out = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([cancelled]),
                    **self._generate_kwargs(sampling),
                )
                new_ids.extend(out[0, len(ids) :].tolist())
            except BaseException as e:  # handed to the reading thread, which raises it
                errors.append(e)
                streamer.end()

        with self._lock:
            if sampling.seed is not None:
                self.reseed(sampling.seed)
            thread = threading.Thread(target=work, name="generate", daemon=True)
            thread.start()
            try:
                yield from (piece for piece in streamer if piece)
            finally:
                cancel.set()
                thread.join()
                usage.completion_tokens = len(new_ids)
                usage.finish_reason = self._finish_reason(new_ids, sampling.max_new_tokens)
        if errors:
            raise errors[0]

    def _finish_reason(self, new_ids: list[int], max_new_tokens: int) -> str:
        if new_ids and new_ids[-1] in self.eos_ids:
            return "stop"
        return "length" if len(new_ids) >= max_new_tokens else "stop"


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every token id that ends a generation: the generation config's and the tokenizer's."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    return {i for i in ids if i is not None}


class LlamaCppGenerator(TextGenerator):
    """A GGUF file through llama-cpp-python: text prompts go to its completion
    API, chat messages to its chat API (which renders the chat template stored
    in the GGUF file).  Token counts come from its streamed chunks; the prompt
    tokens of a chat request are not reported (0)."""

    def __init__(self, llm: Any, name: str):
        super().__init__(name)
        self.llm = llm
        self.chat_template = "tokenizer.chat_template" in (getattr(llm, "metadata", None) or {})
        self.context_length = int(llm.n_ctx())

    def stream(self, prompt: Prompt, sampling: Sampling, *, truncate: bool = False) -> Stream:
        request: list[int] | list[Message]
        if isinstance(prompt, str):
            with self._lock:
                request = self.fit(self.llm.tokenize(prompt.encode("utf-8")), sampling.max_new_tokens, truncate)
            usage = Usage(prompt_tokens=len(request))
        elif not self.chat_template:
            raise self.no_chat_template()
        else:
            request, usage = prompt, Usage()
        return Stream(self._generate(request, sampling, usage), usage, sampling.stop)

    def reseed(self, seed: int) -> None:
        self.llm.set_seed(seed)

    def _generate(
        self, request: list[int] | list[Message], sampling: Sampling, usage: Usage
    ) -> Generator[str, None, None]:
        """Prompt token ids go to the completion API, messages to the chat API."""
        kwargs = {
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature if sampling.sampled else 0.0,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "repeat_penalty": sampling.repetition_penalty,
            "stop": list(sampling.stop),
            "stream": True,
        }
        with self._lock:
            if sampling.seed is not None:
                self.reseed(sampling.seed)
            if request and isinstance(request[0], dict):
                chunks = self.llm.create_chat_completion(messages=request, **kwargs)
            else:
                chunks = self.llm.create_completion(request, **kwargs)
            for chunk in chunks:
                choice = chunk["choices"][0]
                piece = choice["text"] if "text" in choice else choice.get("delta", {}).get("content")
                usage.finish_reason = choice.get("finish_reason") or usage.finish_reason
                if piece:
                    usage.completion_tokens += 1
                    yield piece
