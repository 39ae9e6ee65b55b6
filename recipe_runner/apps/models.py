"""Which model to talk to, and loading it.

A recipe's model is the output of one of its stages, committed in its run
directory under the recipe's *current* keys (what ``recipe status`` calls
done): by default the last stage that produces a ``model``, ``adapter`` or
``gguf_file``; ``--stage NAME`` (or ``NAME.OUTPUT`` for a stage with several
model outputs) picks one.  A path names a model directly: a Hugging Face
model directory, a PEFT adapter directory or a ``.gguf`` file.

An adapter is loaded on its base: ``--base``, else the model the recipe bound
to the adapter stage's input (when committed), else the
``base_model_name_or_path`` of its ``adapter_config.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import ADAPTER, GGUF_FILE, MODEL, Artifact
from ..planning import status
from ..recipe import Recipe, ResolvedStage
from ..store import RunStore
from .generation import HFGenerator, LlamaCppGenerator, TextGenerator

#: the artifact kinds one can talk to, in the order a stage's outputs are preferred
MODEL_KINDS = (MODEL, ADAPTER, GGUF_FILE)


class AppError(Exception):
    """A problem the user fixes (no such stage, nothing built yet, a missing
    package): the message says what to do; the command exits 2."""


@dataclass(frozen=True)
class ModelSource:
    """A model to load: its artifact kind, where it is, the name it is shown
    and served under, and (an adapter) its base model, a directory or hub id."""

    kind: str
    path: Path
    name: str
    base: str | None = None
    note: str = ""


def find_in_run(
    recipe: Recipe, workdir: Path, selector: str | None, run_args: str, base: str | None = None
) -> ModelSource:
    """The model a recipe's run built: the stage ``selector`` names
    (``NAME`` or ``NAME.OUTPUT``), or the last one that produced a model.
    ``run_args``: the arguments of the `recipe run` that builds it (for the
    message when nothing is built yet)."""
    store = RunStore(workdir, recipe.name)
    done = {e["name"]: e["fingerprint"] for e in status(recipe, store)["stages"] if e["status"] == "done"}
    run_first = f"run the recipe first: recipe run {run_args}"
    note = ""
    if selector:
        stage, output = _select(recipe, selector)
        if stage.name not in done:
            raise AppError(f"stage '{stage.name}' has no output under the recipe's current parameters: {run_first}")
    else:
        stage, note = _last_built(recipe, done, run_first)
        output = None
    artifacts = store.outputs(stage.name, done[stage.name])
    artifact = artifacts[output] if output else _preferred(artifacts)
    name = f"{recipe.name}/{stage.name}"
    if artifact.kind == GGUF_FILE:
        return ModelSource(GGUF_FILE, _gguf_file(artifact.path), name, note=note)
    if artifact.kind == ADAPTER:
        base = base or _bound_base(recipe, stage, store, done)
    return ModelSource(artifact.kind, artifact.path, name, base=base, note=note)


def source_from_path(path: Path, base: str | None = None) -> ModelSource:
    """The model at a path: a .gguf file, an adapter, a model directory, or a
    directory holding one .gguf file (a gguf_file artifact)."""
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(GGUF_FILE, path, path.stem)
    if not path.is_dir():
        raise AppError(f"{path}: no such model directory or .gguf file")
    if (path / "adapter_config.json").is_file():
        return ModelSource(ADAPTER, path, path.name, base=base)
    if (path / "config.json").is_file():
        return ModelSource(MODEL, path, path.name)
    if list(path.glob("*.gguf")):
        return ModelSource(GGUF_FILE, _gguf_file(path), path.name)
    raise AppError(
        f"{path} is not a model: expected a Hugging Face model directory (config.json), "
        "a PEFT adapter (adapter_config.json) or a .gguf file"
    )


def model_outputs(stage: ResolvedStage) -> dict[str, str]:
    """The stage's outputs one can talk to (output name -> kind)."""
    return {out: kind for out, kind in stage.outputs.items() if kind in MODEL_KINDS}


def _select(recipe: Recipe, selector: str) -> tuple[ResolvedStage, str | None]:
    """The stage (and output) ``NAME`` or ``NAME.OUTPUT`` names, which must produce a model."""
    names = {s.name for s in recipe.stages}
    name, output = selector, None
    if selector not in names and "." in selector:
        name, output = selector.rsplit(".", 1)
    try:
        stage = recipe.stage(name)
    except KeyError as e:
        raise AppError(e.args[0]) from None
    models = model_outputs(stage)
    if not models:
        produces = ", ".join(sorted(set(stage.outputs.values()))) or "nothing"
        choices = ", ".join(s.name for s in recipe.stages if model_outputs(s)) or "none in this recipe"
        raise AppError(
            f"stage '{stage.name}' ({stage.type}) produces {produces}, not a model: choose a stage whose "
            f"output is a {', '.join(MODEL_KINDS)} ({choices})"
        )
    if output is not None and output not in models:
        raise AppError(f"stage '{stage.name}' has no model output '{output}'; its model outputs: {', '.join(models)}")
    return stage, output


def _last_built(recipe: Recipe, done: dict[str, str], run_first: str) -> tuple[ResolvedStage, str]:
    """The last model-producing stage that is committed, and a note when later ones are not."""
    candidates = [s for s in recipe.stages if model_outputs(s)]
    if not candidates:
        raise AppError(f"recipe '{recipe.name}' has no stage that produces a {', '.join(MODEL_KINDS)}")
    built = [s for s in candidates if s.name in done]
    if not built:
        raise AppError(f"no model artifact yet: {run_first}")
    stage = built[-1]
    later = [s.name for s in candidates[candidates.index(stage) + 1 :]]
    note = f"later model stages not built under the current parameters: {', '.join(later)}" if later else ""
    return stage, note


def _preferred(artifacts: dict[str, Artifact]) -> Artifact:
    """A stage's model output: a model over an adapter over a GGUF file."""
    models = [a for a in artifacts.values() if a.kind in MODEL_KINDS]
    return min(models, key=lambda a: MODEL_KINDS.index(a.kind))


def _bound_base(recipe: Recipe, stage: ResolvedStage, store: RunStore, done: dict[str, str]) -> str | None:
    """The committed model the recipe bound to the adapter stage's model input."""
    for binding in stage.bindings.values():
        if binding is not None and binding.kind == MODEL and binding.stage in done:
            return str(store.outputs(binding.stage, done[binding.stage])[binding.output].path)
    return None


def _gguf_file(path: Path) -> Path:
    """The .gguf file of a gguf_file artifact (a directory holding one)."""
    if path.is_file():
        return path
    files = sorted(path.glob("*.gguf"))
    if len(files) != 1:
        raise AppError(f"{path}: expected one .gguf file, found {len(files)}")
    return files[0]


def load_generator(source: ModelSource, device: str = "auto") -> TextGenerator:
    """The model ready to generate: transformers for a model directory or an
    adapter (on its base), llama.cpp for a GGUF file."""
    if source.kind == GGUF_FILE:
        return _load_gguf(source)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev, dtype = _device_and_dtype(device)
    tokenizer_dir: str | Path = source.path
    try:
        if source.kind == ADAPTER:
            from peft import PeftModel

            base = adapter_base(source)
            model: Any = PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(base, dtype=dtype), str(source.path)
            )
            tokenizer_dir = source.path if (source.path / "tokenizer_config.json").is_file() else base
        else:
            model = AutoModelForCausalLM.from_pretrained(str(source.path), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except OSError as e:
        raise AppError(f"cannot load the model at {source.path}: {e}") from None
    return HFGenerator(model.to(dev).eval(), tokenizer, source.name)


def adapter_base(source: ModelSource) -> str:
    """The base model of an adapter: the one given, else its adapter_config.json's."""
    if source.base:
        return source.base
    config = json.loads((source.path / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise AppError(f"{source.path}: adapter_config.json names no base model; give one with --base")
    return str(base)


def _device_and_dtype(device: str) -> tuple[str, Any]:
    """'auto' is cuda where visible, else cpu; bf16 on a GPU that has it, else fp32."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AppError(f"--device {device}: no CUDA device is visible")
    bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    return device, torch.bfloat16 if bf16 else torch.float32


def _load_gguf(source: ModelSource) -> TextGenerator:
    try:
        from llama_cpp import Llama
    except ImportError as e:
        if getattr(e, "name", None) != "llama_cpp":
            raise AppError(f"llama-cpp-python is installed but does not import: {e}") from None
        raise AppError(
            f"{source.path} is a GGUF file: talking to it needs llama-cpp-python (pip install llama-cpp-python); "
            "or choose a stage whose output is a Hugging Face model or adapter (--stage)"
        ) from None
    return LlamaCppGenerator(Llama(model_path=str(source.path), n_ctx=0, verbose=False), source.name)
