"""Where and in what precision a stage runs torch: the recipe's ``device`` and
``precision`` fields, their resolution on this machine, and the torch CPU
thread count a stage runs with.  torch is imported inside the functions, so
importing a stage module stays cheap."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from recipe_runner import run_setting
from recipe_runner.stage import StageContext, StageError

if TYPE_CHECKING:
    import torch

Precision = Literal["auto", "bf16", "fp16", "fp32"]
Device = Literal["auto", "cpu", "cuda"]

StageT = TypeVar("StageT")
ContextT = TypeVar("ContextT", bound=StageContext[Any])
ResultT = TypeVar("ResultT")


def cpu_threads_field() -> Any:
    """The `cpu_threads` parameter of every torch-running stage: a run
    setting (out of the stage's key) -- torch's CPU kernels give bit-identical
    weights with 1 and 2 threads (measured: 5 AdamW steps of 2-layer Llamas of
    hidden size 32, 128 and 512, and the pretrain stage's test)."""
    return run_setting(
        None,
        ge=1,
        description="torch CPU threads while this stage runs (None: torch's default, one per "
        "core); 1 on a shared, oversubscribed host, where idle-spinning OpenMP threads were measured "
        "15x slower",
    )


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


def with_cpu_threads(
    run: Callable[[StageT, ContextT], ResultT],
) -> Callable[[StageT, ContextT], ResultT]:
    """Decorate a stage's ``run`` so it runs with ``params.cpu_threads`` torch
    threads (stages whose parameters have no such field run unchanged)."""

    @functools.wraps(run)
    def run_with_threads(self: StageT, ctx: ContextT) -> ResultT:
        with cpu_threads(getattr(ctx.params, "cpu_threads", None)):
            return run(self, ctx)

    return run_with_threads


def resolve_device(device: str = "auto") -> str:
    """'auto' is cuda where a CUDA device is visible, else cpu; asking for
    cuda without one is a StageError."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise StageError("the recipe asks for device 'cuda' but no CUDA device is visible")
    return device


def resolve_precision(precision: str = "auto", device: str = "auto") -> str:
    """'auto' is bf16 on a GPU that has it, else fp32 (the course's choice);
    fp16 on a CPU is a StageError."""
    import torch

    device = resolve_device(device)
    if precision == "auto":
        if device == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if precision == "fp16" and device == "cpu":
        raise StageError("fp16 training needs a GPU; use precision 'fp32' or 'bf16' on a CPU")
    return precision


def torch_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a resolved precision ('bf16', 'fp16' or 'fp32')."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
