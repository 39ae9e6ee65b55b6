"""Shared fixtures: real, tiny artifacts built on the spot (no downloads).

- ``data_dir``: the project's shipped reference data (recipes/data).
- ``tiny_tokenizer_dir``: a byte-level BPE tokenizer (vocab 512) trained on
  the-verdict.txt, saved as a Hugging Face tokenizer directory.
- ``tiny_model_dir``: a randomly initialised 2-layer Llama (hidden 64) with
  that tokenizer, saved as a self-contained model directory.
- ``start_s3_server``: starts a real S3 API server (moto's server mode) on
  127.0.0.1 with the buckets asked for.
- ``cli_imports``: runs ``recipe ARGS`` in a fresh interpreter and says what
  it printed, its exit code and which top-level modules it imported.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "recipes" / "data"
#: the credentials moto's server accepts (it checks none until told to)
S3_CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class CliImports:
    stdout: str
    stderr: str
    exit_code: int
    modules: set[str]  # top-level names in sys.modules after the command


def _cli_imports(args: list[str]) -> CliImports:
    code = (
        "import sys; from recipe_runner.cli import app\n"
        f"try:\n    app({args!r})\nexcept SystemExit as e:\n    code = e.code or 0\nelse:\n    code = 0\n"
        "print('\\n@@exit', code, ' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    printed, _, last = out.stdout.rpartition("@@exit ")
    code_text, _, modules = last.strip().partition(" ")
    return CliImports(printed, out.stderr, int(code_text) if code_text.isdigit() else -1, set(modules.split()))


@pytest.fixture(scope="session")
def cli_imports() -> Callable[[list[str]], CliImports]:
    """``cli_imports(["validate", path])``: the command run in a fresh interpreter
    (so the modules it imports are its own): stdout, stderr, exit code, modules."""
    return _cli_imports


@pytest.fixture(scope="session")
def start_s3_server() -> Iterator[Callable[..., tuple[str, Any, dict[str, str]]]]:
    """``start(*buckets) -> (endpoint URL, boto3 client, credentials env)``: a real S3 API
    server (moto's server mode) on a free port of 127.0.0.1 holding those
    empty buckets, one server per call (a test module may change its auth),
    stopped at the end of the session."""
    pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    servers: list[subprocess.Popen[bytes]] = []

    def start(*buckets: str) -> tuple[str, Any, dict[str, str]]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        servers.append(
            subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        url = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        for bucket in buckets:
            for _ in range(100):
                try:
                    client.create_bucket(Bucket=bucket)
                    break
                except Exception:  # the server is still starting
                    time.sleep(0.1)
        return url, client, dict(S3_CREDS)

    yield start
    for server in servers:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


def train_tiny_tokenizer(text_files: list[Path], vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(f) for f in text_files], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


@pytest.fixture(scope="session")
def train_tokenizer() -> Callable[..., Any]:
    """``train_tokenizer([text files], vocab_size=512)``: a byte-level BPE
    tokenizer (``<unk> <s> </s> <pad>`` specials) trained on the spot."""
    return train_tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    train_tiny_tokenizer([DATA / "the-verdict.txt"]).save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("model")
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out
