"""What the GPU methods (bnb, gptq) need before any work: a visible CUDA
device and their library, each missing one a StageError saying what to
install and what runs on a CPU instead."""

from __future__ import annotations

from typing import Any

from recipe_runner import StageError

GPU_HINT = "On a CPU use method 'int8' (torchao) or 'gguf' (llama.cpp)."


def require_cuda(method: str, device: str, install: str, what: str) -> None:
    """A StageError unless a CUDA device is visible and ``device`` is not 'cpu'
    (``install``: the package extra, ``what``: the library it brings)."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        why = "no CUDA device is visible" if not torch.cuda.is_available() else "the stage's device is 'cpu'"
        raise StageError(
            f"method {method!r} needs a CUDA GPU ({why}) "
            f"and {what} (pip install 'recipe-runner[{install}]'). {GPU_HINT}"
        )


def import_bnb() -> Any:
    try:
        import bitsandbytes
    except Exception as e:
        raise StageError(
            f"method 'bnb' needs bitsandbytes: pip install 'recipe-runner[gpu]' (CUDA only) ({e}). {GPU_HINT}"
        ) from e
    return bitsandbytes


def import_gptqmodel() -> Any:
    try:
        import gptqmodel
    except Exception as e:
        raise StageError(
            "method 'gptq' needs GPTQModel: pip install 'recipe-runner[gptq]' (it needs a CUDA GPU and may "
            f"replace a CPU build of torch with a CUDA one, so install it on a GPU machine) ({e}). {GPU_HINT}"
        ) from e
    return gptqmodel


def require_gpu_method(method: str, device: str) -> None:
    """For 'gptq' and 'bnb': fail before any work when the GPU or the library is missing."""
    if method == "gptq":
        require_cuda(method, device, "gptq", "GPTQModel")
        import_gptqmodel()
    elif method == "bnb":
        require_cuda(method, device, "gpu", "bitsandbytes")
        import_bnb()
