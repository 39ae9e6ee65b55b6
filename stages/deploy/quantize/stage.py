"""``quantize``: make a model smaller for deployment, and prove the result still
works by reading it back.

Methods (``method``):

* ``gguf``: one llama.cpp GGUF file (f32, f16, bf16, q8_0, q5_0, q5_1, q4_0,
  q4_1), written with the ``gguf`` package, tokenizer and recipe lineage
  included (``gguf/``).  Output ``gguf``.
* ``int8``: CPU int8 through torchao, saved and reloaded with transformers.
  Output ``model`` (a quantized model directory).
* ``bnb``: bitsandbytes 8-bit or 4-bit nf4/fp4 (CUDA only).  Output ``model``.
* ``gptq``: GPTQ through GPTQModel, calibrated on the ``dataset`` input (CUDA
  only, extra ``gptq``).  Output ``model``.

Every method reads its output back (transformers' GGUF loader for a GGUF) and
reports the size on disk, the compression ratio against the source model's
safetensors, held-out perplexity before/after on the ``dataset`` input (bounded
by ``max_eval_tokens``) and a greedy sample generation before/after
(``quality.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recipe_runner import Artifact, Facts, Input, PlanView, Stage, StageContext, StageError
from recipe_runner.artifacts import DATASET, GGUF_FILE, MODEL, PACKED_DATASET, QUANTIZED_MODEL, TOKENIZED_DATASET

from ...common.devices import resolve_device, resolve_precision, with_cpu_threads
from ...common.models import load_causal_lm, load_tokenizer
from ..model_facts import kept_model_facts
from .gguf.quantize_gguf import quantize_gguf
from .gpu import require_gpu_method
from .hf_method import quantize_hf
from .params import QuantizeParams
from .quality import Windows, comparison_metrics, eval_windows, measure, source_safetensors_size

#: methods that run on a CPU whatever the stage's device
CPU_METHODS = ("gguf", "int8")

#: the metrics shown first (the run summary shows the first few)
HEADLINE_METRICS = ("compression_ratio", "perplexity_delta", "size_bytes", "perplexity_before", "perplexity_after")

#: the dataset kinds measured (and, for gptq, calibrated) on
DATASET_KINDS = (DATASET, TOKENIZED_DATASET, PACKED_DATASET)

SOURCE_MODEL = Input(MODEL, description="the model to quantize (a self-contained HF directory)")
MEASURED_DATA = Input(
    *DATASET_KINDS,
    optional=True,
    description="held-out text for perplexity before/after; GPTQ calibration data (train split)",
)
CALIBRATION_DATA = Input(*DATASET_KINDS, description="GPTQ calibration data (train split) and held-out text")


class QuantizeStage(Stage[QuantizeParams]):
    name = "quantize"
    version = "1"
    description = (
        "Quantize a model (GGUF f16/q8_0/q4_0 for llama.cpp, CPU int8 via torchao, GPTQ via GPTQModel, "
        "bitsandbytes nf4/int8), read the result back, and report size, compression and perplexity before/after"
    )
    Params = QuantizeParams
    inputs = {"model": SOURCE_MODEL, "dataset": MEASURED_DATA}
    outputs = {"gguf": GGUF_FILE}

    @classmethod
    def input_slots(cls, params: QuantizeParams) -> Mapping[str, Input]:
        if params.method == "gptq":
            return {**cls.inputs, "dataset": CALIBRATION_DATA}
        return cls.inputs

    @classmethod
    def output_slots(cls, params: QuantizeParams) -> Mapping[str, str]:
        return {"gguf": GGUF_FILE} if params.method == "gguf" else {"model": QUANTIZED_MODEL}

    @classmethod
    def output_facts(cls, params: QuantizeParams, inputs: Mapping[str, Facts]) -> Mapping[str, Facts]:
        """The source model's context length and vocabulary hold for the quantized one."""
        return dict.fromkeys(cls.output_slots(params), kept_model_facts(inputs))

    @classmethod
    def cross_check(cls, view: PlanView[QuantizeParams]) -> list[str]:
        p = view.params
        errors = []
        if p.method in ("gptq", "bnb") and p.device == "cpu":
            errors.append(
                f"method {p.method!r} needs a CUDA GPU; device is 'cpu' (use method 'int8' or 'gguf' on a CPU)"
            )
        if p.method == "bnb" and p.bits not in (4, 8):
            errors.append(f"bnb supports bits 4 or 8, not {p.bits}")
        return errors

    @with_cpu_threads
    def run(self, ctx: StageContext[QuantizeParams]) -> dict[str, Artifact]:
        p = ctx.params
        model_art = ctx.input("model")
        model_dir = Path(model_art.path)
        cfg = _model_config(model_dir)
        _check_requirements(p, ctx.inputs.get("dataset"))
        device, precision = _placement(p)
        tokenizer = load_tokenizer(model_dir)
        source_size = source_safetensors_size(model_dir)
        ctx.metrics.update(method=p.method, source_size_bytes=source_size)
        windows, before = _measure_source(ctx, model_dir, cfg, tokenizer, device, precision)
        t0 = time.perf_counter()
        art, reloaded, size = _quantize_and_read_back(ctx, model_art, tokenizer, device, precision)
        ctx.metrics["quantize_seconds"] = round(time.perf_counter() - t0, 3)
        ctx.metrics.update(size_bytes=size, compression_ratio=round(source_size / size, 4) if size else None)
        if p.evaluate:
            with ctx.progress("measure quantized model", total=None):
                after = measure(reloaded, tokenizer, windows, p.prompt, p.max_new_tokens)
            ctx.metrics.update(comparison_metrics(before, after, p.prompt))
        _put_headline_first(ctx.metrics)
        _describe(ctx, art, source_size, size)
        return {("gguf" if p.method == "gguf" else "model"): art}


def _model_config(model_dir: Path) -> dict[str, Any]:
    if not (model_dir / "config.json").is_file():
        raise StageError(f"model input {model_dir}: no config.json (expected a Hugging Face model directory)")
    cfg: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    return cfg


def _check_requirements(p: QuantizeParams, data_art: Artifact | None) -> None:
    """Fail before any work: gptq without calibration data, a GPU method
    without a GPU or its library."""
    if p.method == "gptq" and data_art is None:
        raise StageError("method 'gptq' needs a dataset input for calibration")
    require_gpu_method(p.method, p.device)


def _placement(p: QuantizeParams) -> tuple[str, str]:
    """(device, precision) of quantizing and of the 'before' measurement:
    gguf and int8 on the CPU in fp32; gptq / bnb on the resolved device."""
    device = "cpu" if p.method in CPU_METHODS else resolve_device(p.device)
    precision = resolve_precision(p.precision, device) if device == "cuda" else "fp32"
    return device, precision


def _measure_source(
    ctx: StageContext[QuantizeParams],
    model_dir: Path,
    cfg: dict[str, Any],
    tokenizer: Any,
    device: str,
    precision: str,
) -> tuple[Windows, dict[str, Any]]:
    """(perplexity windows, 'before' measurements) of the source model; nothing
    when ``evaluate`` is off, no perplexity without a dataset input."""
    p = ctx.params
    data_art = ctx.inputs.get("dataset")
    windows: Windows = []
    if not p.evaluate:
        return windows, {}
    if data_art is not None:
        ctx_len = int(cfg.get("max_position_embeddings") or p.eval_seq_len)
        windows, split, n_tok = eval_windows(
            data_art,
            tokenizer,
            int(cfg["vocab_size"]),
            p.eval_split,
            p.max_eval_tokens,
            min(p.eval_seq_len, ctx_len),
        )
        ctx.metrics.update(eval_split=split, eval_tokens=n_tok)
    else:
        ctx.log.info("no dataset input: perplexity is not measured (sample generation only)")
    with ctx.progress("measure source model", total=None):
        src = load_causal_lm(model_dir, precision=precision, device=device)
        before = measure(src, tokenizer, windows, p.prompt, p.max_new_tokens)
        del src
    return windows, before


def _quantize_and_read_back(
    ctx: StageContext[QuantizeParams], model_art: Artifact, tokenizer: Any, device: str, precision: str
) -> tuple[Artifact, Any, int]:
    """(output artifact, the output read back as a model, its size in bytes)."""
    if ctx.params.method == "gguf":
        return quantize_gguf(ctx, model_art)
    return quantize_hf(ctx, Path(model_art.path), tokenizer, device, precision)


def _put_headline_first(m: dict[str, Any]) -> None:
    ordered = {k: m[k] for k in HEADLINE_METRICS if k in m}
    ordered.update({k: v for k, v in m.items() if k not in ordered})
    m.clear()
    m.update(ordered)


def _describe(ctx: StageContext[QuantizeParams], art: Artifact, source_size: int, size: int) -> None:
    """Sizes and perplexities into the artifact's metadata, and one log line."""
    m = ctx.metrics
    art.meta.update({k: m[k] for k in ("size_bytes", "compression_ratio") if k in m})
    for k in ("perplexity_before", "perplexity_after", "perplexity_delta"):
        if k in m:
            art.meta[k] = m[k]
    ctx.log.info(
        "quantized with %s: %d -> %d bytes (x%s)%s",
        ctx.params.method,
        source_size,
        size,
        m.get("compression_ratio"),
        f", perplexity {m['perplexity_before']} -> {m['perplexity_after']}" if "perplexity_after" in m else "",
    )
