"""``recipe chat``: talk to a model in the terminal.

A model whose tokenizer has a chat template (the one the sft stage trained
with) is a chat: each line is a user turn, the conversation is kept (and its
oldest tokens dropped when it outgrows the context).  A model without one (a
base model) completes text: each line is a prompt of its own.  Replies are
printed as they are generated.

On a terminal the lines are read with a prompt and line editing; otherwise
(a pipe or a file) each line of stdin is a prompt and stdout gets each reply
followed by a newline, nothing else, so the command is scriptable.  Lines
``/reset`` (or ``/clear``) start a new conversation, ``/exit`` (or
``/quit``) ends it."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TextIO

from .generation import GenerationError, Message, Prompt, Sampling, TextGenerator

EXIT_COMMANDS = ("/exit", "/quit")
RESET_COMMANDS = ("/reset", "/clear")


@dataclass
class ChatSession:
    """One conversation: the model, the sampling settings, an optional system
    prompt and the turns so far (chat models only)."""

    generator: TextGenerator
    sampling: Sampling
    system: str | None = None
    history: list[Message] = field(default_factory=list)

    @property
    def is_chat(self) -> bool:
        return self.generator.chat_template

    def prompt(self, text: str) -> Prompt:
        """What the model is given for this line: the conversation with the new
        user turn, or (no chat template) the line itself."""
        if not self.is_chat:
            return text
        system: list[Message] = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, *self.history, {"role": "user", "content": text}]

    def remember(self, text: str, reply: str) -> None:
        if self.is_chat:
            self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]

    def reset(self) -> None:
        self.history.clear()


def banner(session: ChatSession) -> str:
    mode = (
        "chat (the model's chat template)"
        if session.is_chat
        else "completion (no chat template: each line is a prompt to continue)"
    )
    return f"model {session.generator.name}: {mode}. /reset starts over, /exit quits."


def terminal_lines(prompt: str = "you> ") -> Iterator[str]:
    """Lines typed at a terminal (with line editing) until end of input or Ctrl-C."""
    try:
        importlib.import_module("readline")  # loaded, it gives input() history and line editing
    except ImportError:  # not on every platform
        pass
    while True:
        try:
            yield input(prompt)
        except (EOFError, KeyboardInterrupt):
            return


def run_chat(session: ChatSession, lines: Iterable[str], out: TextIO, err: TextIO, interactive: bool) -> int:
    """Answer each line; 0, or 1 when a line could not be answered (the
    reason is printed and the next line is read)."""
    if session.sampling.seed is not None:
        session.generator.reseed(session.sampling.seed)  # once: the whole conversation is reproducible
        session.sampling = replace(session.sampling, seed=None)
    failed = 0
    for line in lines:
        text = line.rstrip("\r\n")
        command = text.strip().lower()
        if command in EXIT_COMMANDS:
            break
        if command in RESET_COMMANDS:
            session.reset()
            err.write("(conversation cleared)\n")
            continue
        if not text.strip():
            continue
        try:
            reply = _answer(session, text, out, interactive)
        except GenerationError as e:
            err.write(f"error: {e}\n")
            failed += 1
            continue
        session.remember(text, reply)
    return 1 if failed else 0


def _answer(session: ChatSession, text: str, out: TextIO, interactive: bool) -> str:
    """Stream the reply to one line to ``out``; the reply's text."""
    stream = session.generator.stream(session.prompt(text), session.sampling, truncate=True)
    pieces: list[str] = []
    if interactive:
        out.write("model> ")
    try:
        for piece in stream:
            out.write(piece)
            out.flush()
            pieces.append(piece)
    except KeyboardInterrupt:  # at a terminal, Ctrl-C stops this reply, not the chat
        stream.close()
        if not interactive:
            raise
        out.write(" [stopped]")
    out.write("\n")
    out.flush()
    return "".join(pieces)


def chat_in_terminal(generator: TextGenerator, sampling: Sampling, system: str | None = None) -> int:
    """``recipe chat``: a terminal session on stdin/stdout (prompted, with
    line editing, when stdin is a terminal; one prompt per line otherwise)."""
    session = ChatSession(generator, sampling, system)
    interactive = sys.stdin.isatty()
    if system and not session.is_chat:
        sys.stderr.write("note: --system is ignored: the model has no chat template\n")
    if interactive:
        sys.stderr.write(banner(session) + "\n")
    lines = terminal_lines() if interactive else sys.stdin
    return run_chat(session, lines, sys.stdout, sys.stderr, interactive)
