"""Shared glue between stages and the Hugging Face stack: devices, precision,
loading and saving self-contained model directories.  Heavy imports stay
inside functions so importing a stage module stays cheap."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import Field

Precision = Literal["auto", "bf16", "fp16", "fp32"]
Device = Literal["auto", "cpu", "cuda"]


def cpu_threads_field():
    """The `cpu_threads` parameter of every torch-running stage."""
    return Field(None, ge=1, description="torch CPU threads while this stage runs (None: torch's default, one per "
                 "core); 1 on a shared, oversubscribed host, where idle-spinning OpenMP threads were measured "
                 "15x slower")


def with_cpu_threads(run):
    """Decorate a stage's ``run`` so it runs with ``params.cpu_threads`` torch threads."""
    import functools

    @functools.wraps(run)
    def wrapper(self, ctx):
        with cpu_threads(getattr(ctx.params, "cpu_threads", None)):
            return run(self, ctx)

    return wrapper


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` torch CPU threads, restoring the previous count."""
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        from recipe_runner.stage import StageError

        raise StageError("the recipe asks for device 'cuda' but no CUDA device is visible")
    return device


def resolve_precision(precision: str = "auto", device: str = "auto") -> str:
    """'auto' is bf16 on a GPU that has it, else fp32 (the course's choice)."""
    import torch

    device = resolve_device(device)
    if precision == "auto":
        if device == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if precision == "fp16" and device == "cpu":
        from recipe_runner.stage import StageError

        raise StageError("fp16 training needs a GPU; use precision 'fp32' or 'bf16' on a CPU")
    return precision


def torch_dtype(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def load_tokenizer(path: str | Path, **kwargs: Any):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), **kwargs)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str | Path, precision: str = "fp32", device: str = "cpu", **kwargs: Any):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(precision), **kwargs)
    return model.to(resolve_device(device))


def has_weights(path: str | Path) -> bool:
    p = Path(path)
    return any(p.glob("*.safetensors")) or any(p.glob("*.bin"))


def save_model_dir(model: Any, tokenizer: Any | None, path: str | Path,
                   max_shard_size: str | int = "5GB") -> Path:
    """A self-contained model directory: config, safetensors weights,
    generation config and (when known) the tokenizer, so any later stage or
    ``from_pretrained`` needs nothing else."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True, max_shard_size=max_shard_size)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
