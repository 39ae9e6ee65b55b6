"""common/devices.py: device and precision resolution on this machine, torch
dtypes, and the torch CPU thread count a stage runs with (restored after)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from recipe_runner.stage import Params, Stage, StageContext, StageError
from recipe_runner_stages.common.devices import (
    cpu_threads,
    cpu_threads_field,
    resolve_device,
    resolve_precision,
    torch_dtype,
    with_cpu_threads,
)

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a CUDA device")


def test_auto_device_is_cuda_only_where_one_is_visible() -> None:
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


@needs_no_cuda
def test_cuda_without_a_cuda_device_is_a_stage_error() -> None:
    with pytest.raises(StageError, match="no CUDA device is visible"):
        resolve_device("cuda")
    with pytest.raises(StageError, match="no CUDA device"):
        resolve_precision("auto", "cuda")


def test_precision_on_cpu() -> None:
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(StageError, match="fp16 training needs a GPU"):
        resolve_precision("fp16", "cpu")


@needs_no_cuda
def test_auto_precision_follows_the_resolved_device() -> None:
    assert resolve_precision("auto", "auto") == "fp32"


def test_torch_dtype_of_each_precision() -> None:
    assert torch_dtype("bf16") is torch.bfloat16
    assert torch_dtype("fp16") is torch.float16
    assert torch_dtype("fp32") is torch.float32
    with pytest.raises(KeyError):
        torch_dtype("auto")


def test_cpu_threads_sets_and_restores_the_count() -> None:
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    with cpu_threads(wanted):
        assert torch.get_num_threads() == wanted
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), cpu_threads(wanted):
        raise RuntimeError("a failing stage")
    assert torch.get_num_threads() == before
    with cpu_threads(None):
        assert torch.get_num_threads() == before


class _ThreadedParams(Params):
    cpu_threads: int | None = cpu_threads_field()


class _PlainParams(Params):
    pass


class _ThreadCountingStage(Stage[Any]):
    """Records the torch thread count its run sees."""

    @with_cpu_threads
    def run(self, ctx: StageContext[Any]) -> None:
        ctx.metrics["threads"] = torch.get_num_threads()


def test_a_decorated_run_uses_the_stage_cpu_threads(make_context: Callable[..., StageContext[Any]]) -> None:
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    ctx = make_context(_ThreadedParams(cpu_threads=wanted))
    _ThreadCountingStage().run(ctx)
    assert ctx.metrics["threads"] == wanted
    assert torch.get_num_threads() == before
    assert _ThreadCountingStage.run.__name__ == "run"


def test_a_decorated_run_without_the_field_keeps_the_count(make_context: Callable[..., StageContext[Any]]) -> None:
    before = torch.get_num_threads()
    ctx = make_context(_PlainParams())
    _ThreadCountingStage().run(ctx)
    assert ctx.metrics["threads"] == before


def test_cpu_threads_field_rejects_zero() -> None:
    assert _ThreadedParams().cpu_threads is None
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        _ThreadedParams(cpu_threads=0)
