"""Fixtures of the `recipe chat` / `recipe serve` tests: one real run of the
tiny recipe beside this file (a BPE tokenizer trained on the-verdict.txt, a
2-layer Llama pretrained for 200 steps, its f32 GGUF file, a LoRA adapter
fine-tuned on chats with the chatml template; about 30 s on 2 cores), built once per session,
the same models loaded directly with transformers/peft as the reference
for greedy outputs, and the `recipe` command run in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

RECIPE = Path(__file__).resolve().parent / "tiny_chat.yaml"

RecipeCommand = Callable[..., subprocess.CompletedProcess[str]]


@dataclass(frozen=True)
class BuiltRun:
    """The tiny recipe's run: where it is and its model artifacts."""

    recipe: Path
    workdir: Path
    base_model: Path  # the pretrain stage's model directory
    gguf: Path  # the quantize stage's f32 GGUF file of that model
    adapter: Path  # the sft stage's LoRA adapter directory


def _recipe(*args: str, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "recipe_runner.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def recipe_command() -> RecipeCommand:
    """``recipe_command(*args, stdin=None, timeout=300)``: `recipe ARGS...` in a
    subprocess (stdin not a terminal), its CompletedProcess."""
    return _recipe


@pytest.fixture(scope="session")
def built_run(tmp_path_factory: pytest.TempPathFactory) -> BuiltRun:
    """The tiny recipe, run once with `recipe run`."""
    import json

    workdir = tmp_path_factory.mktemp("runs")
    proc = _recipe("run", str(RECIPE), "--workdir", str(workdir), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status = json.loads(_recipe("status", str(RECIPE), "--workdir", str(workdir), "--json").stdout)
    artifacts = {s["name"]: s["artifact"] for s in status["stages"] if s["status"] == "done"}
    assert {"pretrain", "quantize", "sft"} <= set(artifacts), f"not done under the current keys: {status['stages']}"
    gguf = Path(artifacts["quantize"]) / "model.f32.gguf"
    return BuiltRun(RECIPE, workdir, Path(artifacts["pretrain"]), gguf, Path(artifacts["sft"]))


@pytest.fixture(scope="session")
def base_lm(built_run: BuiltRun) -> tuple[Any, Any]:
    """(model, tokenizer) of the pretrained model, loaded directly with transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(built_run.base_model)).eval()
    return model, AutoTokenizer.from_pretrained(str(built_run.base_model))


@pytest.fixture(scope="session")
def adapter_lm(built_run: BuiltRun) -> tuple[Any, Any]:
    """(model, tokenizer) of the LoRA adapter on the pretrained model, loaded
    directly with peft (the tokenizer carries the chatml template sft trained with)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(str(built_run.base_model))
    model = PeftModel.from_pretrained(base, str(built_run.adapter)).eval()
    return model, AutoTokenizer.from_pretrained(str(built_run.adapter))


def _greedy(model: Any, tokenizer: Any, text: str, max_new_tokens: int, add_special_tokens: bool = True) -> str:
    import torch

    enc = tokenizer(text, return_tensors="pt", add_special_tokens=add_special_tokens)
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens)
    reply: str = tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return reply


@pytest.fixture(scope="session")
def greedy_completion() -> Callable[..., str]:
    """``greedy_completion(lm, prompt, max_new_tokens)``: a plain transformers
    greedy ``generate`` on the prompt (encoded with the tokenizer's special
    tokens), the new text."""

    def complete(lm: tuple[Any, Any], prompt: str, max_new_tokens: int) -> str:
        return _greedy(*lm, prompt, max_new_tokens)

    return complete


@pytest.fixture(scope="session")
def greedy_chat() -> Callable[..., str]:
    """``greedy_chat(lm, messages, max_new_tokens)``: the messages rendered with
    the tokenizer's chat template, then a plain greedy ``generate``, the reply."""

    def chat(lm: tuple[Any, Any], messages: list[dict[str, str]], max_new_tokens: int) -> str:
        text = lm[1].apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return _greedy(*lm, text, max_new_tokens, add_special_tokens=False)

    return chat


@dataclass(frozen=True)
class Server:
    """A running `recipe serve`: its OpenAI base URL and the model id it serves."""

    base_url: str
    model_id: str
    log: Path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_until_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 180) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"recipe serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"recipe serve not ready after {timeout:.0f}s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def served_adapter(built_run: BuiltRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`recipe serve` of the tiny recipe's sft stage (base + LoRA) on a free
    port of 127.0.0.1, stopped at the end of the session."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    args = ["serve", str(built_run.recipe), "--workdir", str(built_run.workdir), "--stage", "sft", "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "recipe_runner.cli", *args], stdout=out, stderr=out)
    try:
        _wait_until_ready(proc, f"http://127.0.0.1:{port}/health", log)
        yield Server(f"http://127.0.0.1:{port}/v1", "apps-tiny-chat/sft", log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
