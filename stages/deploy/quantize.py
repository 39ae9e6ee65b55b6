"""``quantize``: make a model smaller for deployment, and prove the result still
works by reading it back.

Methods (``method``):

* ``gguf``: one llama.cpp GGUF file (f32, f16, bf16, q8_0, q5_0, q5_1, q4_0,
  q4_1), written with the ``gguf`` package, tokenizer and recipe lineage
  included (``stages/deploy/gguf_convert.py``).  Output ``gguf``.
* ``int8``: CPU int8 through torchao, saved and reloaded with transformers.
  Output ``model`` (a quantized model directory).
* ``bnb``: bitsandbytes 8-bit or 4-bit nf4/fp4 (CUDA only).  Output ``model``.
* ``gptq``: GPTQ through GPTQModel, calibrated on the ``dataset`` input (CUDA
  only, extra ``gptq``).  Output ``model``.

Every method reads its output back (transformers' GGUF loader for a GGUF) and
reports the size on disk, the compression ratio against the source model's
safetensors, held-out perplexity before/after on the ``dataset`` input (bounded
by ``max_eval_tokens``) and a greedy sample generation before/after.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import Field

from recipe_runner.artifacts import (
    DATASET,
    GGUF_FILE,
    MODEL,
    PACKED_DATASET,
    QUANTIZED_MODEL,
    TOKENIZED_DATASET,
    Artifact,
)
from recipe_runner.stage import Input, Params, PlanView, Stage, StageContext, StageError

from ..common.devices import cpu_threads_field, resolve_device, resolve_precision, torch_dtype, with_cpu_threads
from ..common.models import load_causal_lm, load_tokenizer

GGUFType = Literal["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"]


class QuantizeParams(Params):
    method: Literal["gguf", "int8", "gptq", "bnb"] = Field(
        "gguf",
        description="'gguf': a llama.cpp GGUF file (Llama-family models; runs on CPU); 'int8': CPU int8 through "
        "torchao, a transformers model directory; 'gptq': GPTQ through GPTQModel, calibrated on the dataset input "
        "(needs a CUDA GPU and GPTQModel, the package's `gptq` extra); 'bnb': bitsandbytes 8-bit / 4-bit nf4 "
        "(needs a CUDA GPU and bitsandbytes, the package's `gpu` extra)",
    )
    gguf_type: GGUFType = Field(
        "q8_0",
        description="GGUF tensor type: f32, f16, bf16, q8_0 (8-bit), q5_0/q5_1, q4_0/q4_1 (4-bit). Norms stay F32; "
        "tensors whose rows are not a multiple of 32 fall back to F16; with 4/5-bit types the output projection "
        "is kept at Q8_0. K-quants (q4_k...) are not written by the gguf package: run llama.cpp's `llama-quantize` "
        "on the f16 file for those",
    )
    gguf_name: str = Field(
        "model",
        description="file name stem of the GGUF: `<gguf_name>.<gguf_type>.gguf`",
    )
    bits: Literal[2, 3, 4, 8] = Field(
        4, description="weight bits for gptq (2, 3, 4, 8) and bnb (4 or 8)"
    )
    group_size: int = Field(
        128, description="GPTQ quantization group size (columns sharing one scale); -1 for per-channel", ge=-1
    )
    desc_act: bool | None = Field(
        None, description="GPTQ act-order (quantize columns by decreasing activation); null: GPTQModel's default"
    )
    calibration_samples: int = Field(
        128, ge=1, description="GPTQ calibration sequences taken from the dataset input's train split"
    )
    calibration_seq_len: int = Field(512, ge=16, description="tokens per GPTQ calibration sequence")
    calibration_batch_size: int = Field(1, ge=1, description="GPTQ calibration batch size")
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="bitsandbytes 4-bit data type (bits: 4)"
    )
    int8_scheme: Literal["weight_only", "dynamic_activation"] = Field(
        "weight_only",
        description="method int8: 'weight_only' (int8 weights, float activations: torchao Int8WeightOnlyConfig) or "
        "'dynamic_activation' (int8 weights and per-token int8 activations: Int8DynamicActivationInt8WeightConfig; "
        "faster on long prompts, slower token by token on a CPU)",
    )
    evaluate: bool = Field(
        True,
        description="measure perplexity (needs the dataset input) and a sample generation before and after; "
        "off: only sizes",
    )
    eval_split: Literal["auto", "validation", "train"] = Field(
        "auto", description="split of the dataset input for perplexity; 'auto': validation if there is one, else train"
    )
    max_eval_tokens: int = Field(
        4096, ge=2, description="at most this many tokens of the dataset input are scored (keeps evaluation fast)"
    )
    eval_seq_len: int = Field(
        256, ge=2, description="perplexity window length in tokens (capped by the model's context length)"
    )
    prompt: str = Field(
        "I am an engineer. I love", description="prompt of the greedy sample generation before/after ('' skips it)"
    )
    max_new_tokens: int = Field(32, ge=0, description="tokens generated for the sample")
    cpu_threads: int | None = cpu_threads_field()
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where gptq/bnb quantize and where 'before' is evaluated; gguf and int8 run on CPU"
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto",
        description="dtype of the source model for the 'before' measurement and of bnb's compute; 'auto': bf16 "
        "on a GPU that has it, else fp32",
    )


class QuantizeStage(Stage):
    name = "quantize"
    version = "1"
    description = (
        "Quantize a model (GGUF f16/q8_0/q4_0 for llama.cpp, CPU int8 via torchao, GPTQ via GPTQModel, "
        "bitsandbytes nf4/int8), read the result back, and report size, compression and perplexity before/after"
    )
    Params = QuantizeParams
    inputs = {
        "model": Input(MODEL, description="the model to quantize (a self-contained HF directory)"),
        "dataset": Input(
            DATASET, TOKENIZED_DATASET, PACKED_DATASET, optional=True,
            description="held-out text for perplexity before/after; GPTQ calibration data (train split)",
        ),
    }
    outputs = {"gguf": GGUF_FILE}

    @classmethod
    def input_slots(cls, params: QuantizeParams) -> Mapping[str, Input]:
        if params.method == "gptq":
            return {**cls.inputs, "dataset": Input(DATASET, TOKENIZED_DATASET, PACKED_DATASET,
                                                   description="GPTQ calibration data (train split) and held-out text")}
        return cls.inputs

    @classmethod
    def output_slots(cls, params: QuantizeParams) -> Mapping[str, str]:
        return {"gguf": GGUF_FILE} if params.method == "gguf" else {"model": QUANTIZED_MODEL}

    @classmethod
    def cross_check(cls, view: PlanView) -> list[str]:
        p: QuantizeParams = view.params  # type: ignore[assignment]
        errors = []
        if p.method in ("gptq", "bnb") and p.device == "cpu":
            errors.append(f"method {p.method!r} needs a CUDA GPU; device is 'cpu' (use method 'int8' or 'gguf' on a CPU)")
        if p.method == "bnb" and p.bits not in (4, 8):
            errors.append(f"bnb supports bits 4 or 8, not {p.bits}")
        if p.method == "gptq" and p.group_size == 0:
            errors.append("group_size 0 is not valid (use -1 for per-channel)")
        return errors

    # ------------------------------------------------------------------ run

    @with_cpu_threads
    def run(self, ctx: StageContext) -> dict[str, Artifact]:
        from . import quant_eval as qe

        p: QuantizeParams = ctx.params  # type: ignore[assignment]
        model_art = ctx.input("model")
        model_dir = Path(model_art.path)
        if not (model_dir / "config.json").is_file():
            raise StageError(f"model input {model_dir}: no config.json (expected a Hugging Face model directory)")
        cfg = json.loads((model_dir / "config.json").read_text())
        data_art = ctx.inputs.get("dataset")
        if p.method == "gptq" and data_art is None:
            raise StageError("method 'gptq' needs a dataset input for calibration")

        if p.method in ("gptq", "bnb"):
            # fail before any work when the GPU or the library is missing
            from .quant_methods import _import_bnb, _import_gptqmodel, _require_cuda

            _require_cuda(p.method, p.device, "gptq" if p.method == "gptq" else "gpu",
                          "GPTQModel" if p.method == "gptq" else "bitsandbytes")
            _import_gptqmodel() if p.method == "gptq" else _import_bnb()
        quant_device = "cpu" if p.method in ("gguf", "int8") else resolve_device(p.device)
        eval_device = quant_device
        precision = resolve_precision(p.precision, eval_device) if eval_device == "cuda" else "fp32"

        tokenizer = load_tokenizer(model_dir)
        source_size = qe.source_safetensors_size(model_dir)
        m: dict[str, Any] = ctx.metrics
        m.update(method=p.method, source_size_bytes=source_size)

        # ---- before
        windows: list[list[int]] = []
        before: dict[str, Any] = {}
        if p.evaluate:
            if data_art is not None:
                ctx_len = int(cfg.get("max_position_embeddings") or p.eval_seq_len)
                windows, split, n_tok = qe.eval_windows(
                    data_art, tokenizer, int(cfg["vocab_size"]), p.eval_split, p.max_eval_tokens,
                    min(p.eval_seq_len, ctx_len),
                )
                m.update(eval_split=split, eval_tokens=n_tok)
            else:
                ctx.log.info("no dataset input: perplexity is not measured (sample generation only)")
            with ctx.progress("measure source model", total=None):
                src = load_causal_lm(model_dir, precision=precision, device=eval_device)
                before = qe.measure(src, tokenizer, windows, p.prompt, p.max_new_tokens)
                del src

        # ---- quantize + read back
        t0 = time.perf_counter()
        if p.method == "gguf":
            art, reloaded, size = self._gguf(ctx, p, model_dir, model_art)
        else:
            art, reloaded, size = self._hf_method(ctx, p, model_dir, tokenizer, data_art, quant_device, precision)
        m["quantize_seconds"] = round(time.perf_counter() - t0, 3)
        m.update(size_bytes=size, compression_ratio=round(source_size / size, 4) if size else None)

        # ---- after
        if p.evaluate:
            with ctx.progress("measure quantized model", total=None):
                after = qe.measure(reloaded, tokenizer, windows, p.prompt, p.max_new_tokens)
            if "perplexity" in before:
                m.update(
                    perplexity_before=round(before["perplexity"], 4),
                    perplexity_after=round(after["perplexity"], 4),
                    perplexity_delta=round(after["perplexity"] - before["perplexity"], 4),
                    perplexity_delta_pct=round(100 * (after["perplexity"] / before["perplexity"] - 1), 3),
                )
            if "sample" in before:
                m.update(prompt=p.prompt, sample_before=before["sample"], sample_after=after["sample"])
        # headline numbers first (the run summary shows the first few metrics)
        first = ("compression_ratio", "perplexity_delta", "size_bytes", "perplexity_before", "perplexity_after")
        ordered = {k: m[k] for k in first if k in m}
        ordered.update({k: v for k, v in m.items() if k not in ordered})
        m.clear()
        m.update(ordered)
        art.meta.update({k: m[k] for k in ("size_bytes", "compression_ratio") if k in m})
        for k in ("perplexity_before", "perplexity_after", "perplexity_delta"):
            if k in m:
                art.meta[k] = m[k]
        ctx.log.info(
            "quantized with %s: %d -> %d bytes (x%s)%s", p.method, source_size, size, m.get("compression_ratio"),
            f", perplexity {m['perplexity_before']} -> {m['perplexity_after']}" if "perplexity_after" in m else "",
        )
        return {("gguf" if p.method == "gguf" else "model"): art}

    # ------------------------------------------------------------------ gguf

    def _gguf(self, ctx: StageContext, p: QuantizeParams, model_dir: Path, model_art: Artifact):
        import torch
        from transformers import AutoModelForCausalLM

        from .gguf_convert import write_gguf

        out_dir = ctx.output_path("gguf")
        for old in out_dir.glob("*.gguf*"):  # a re-run after a crash starts the file again
            old.unlink()
        fname = f"{p.gguf_name}.{p.gguf_type}.gguf"
        lineage = ctx.lineage.to_json() if ctx.lineage else {}
        meta, description = lineage_metadata(ctx, model_art, p.gguf_type)
        n = len(_weight_names(model_dir))
        with ctx.progress(f"write {fname}", total=n) as prog:
            res = write_gguf(
                model_dir, out_dir / fname, p.gguf_type, metadata=meta,
                name=lineage.get("recipe") or ctx.recipe_name or model_dir.name, description=description,
                progress=prog.advance,
            )
        ctx.metrics.update(gguf_type=p.gguf_type, gguf_file=fname, gguf_tensor_types=res.tensor_types,
                           tokenizer_model=res.tokenizer_model)
        # read it back exactly as a user of transformers would
        try:
            reloaded = AutoModelForCausalLM.from_pretrained(str(out_dir), gguf_file=fname, dtype=torch.float32)
        except Exception as e:
            raise StageError(f"the GGUF {out_dir / fname} was written but transformers cannot load it: {e}") from e
        size = (out_dir / fname).stat().st_size
        art = Artifact(GGUF_FILE, out_dir, meta={
            "file": fname, "gguf_type": p.gguf_type, "architecture": "llama",
            "tokenizer_model": res.tokenizer_model, "num_parameters": res.n_params,
        })
        return art, reloaded, size

    # ------------------------------------------------------------------ int8 / bnb / gptq

    def _hf_method(self, ctx, p: QuantizeParams, model_dir: Path, tokenizer, data_art, device: str, precision: str):
        import shutil

        from . import quant_eval as qe
        from . import quant_methods as qm

        out_dir = ctx.output_path("model")
        for child in out_dir.iterdir():  # a re-run after a crash starts the directory again
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        with ctx.progress(f"quantize ({p.method})", total=None):
            if p.method == "int8":
                info = qm.quantize_int8(model_dir, out_dir, tokenizer, p.int8_scheme)
                info["scheme"] = p.int8_scheme
            elif p.method == "bnb":
                info = qm.quantize_bnb(model_dir, out_dir, tokenizer, p.bits, p.bnb_4bit_quant_type,
                                       torch_dtype(precision), device)
                info["bits"] = p.bits
            else:
                calib = qe.calibration_examples(data_art, tokenizer, p.calibration_samples, p.calibration_seq_len)
                ctx.metrics["calibration_samples"] = len(calib)
                info = qm.quantize_gptq(model_dir, out_dir, tokenizer, p.bits, p.group_size, calib,
                                        p.calibration_batch_size, device, p.desc_act)
                info.update(bits=p.bits, group_size=p.group_size)
        for f in ("generation_config.json",):
            if (model_dir / f).is_file() and not (out_dir / f).exists():
                shutil.copy2(model_dir / f, out_dir / f)
        reloaded = qm.load_quantized(p.method, out_dir, device)
        ctx.metrics.update(format=info["format"], library=info["library"])
        size = qe.weights_size(out_dir)
        art = Artifact(QUANTIZED_MODEL, out_dir, meta={**info, "method": p.method})
        return art, reloaded, size


def _weight_names(model_dir: Path) -> list[str]:
    from safetensors import safe_open

    names: list[str] = []
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            names.extend(fh.keys())
    return names


def lineage_metadata(ctx: StageContext, model_art: Artifact, gguf_type: str) -> tuple[dict[str, Any], str]:
    """GGUF metadata keys ``recipe_runner.*`` from the run's lineage, and a
    general.description sentence."""
    lin = ctx.lineage.to_json() if ctx.lineage else {}
    stage = lin.get("stage") or {}
    recipe = lin.get("recipe") or ctx.recipe_name or ""
    meta: dict[str, Any] = {
        "recipe_runner.recipe": recipe,
        "recipe_runner.stage": stage.get("name") or ctx.name,
        "recipe_runner.stage_fingerprint": stage.get("fingerprint") or "",
        "recipe_runner.seed": int(lin.get("seed", ctx.seed)),
        "recipe_runner.source_model_stage": model_art.producer or "",
        "recipe_runner.source_model_fingerprint": model_art.fingerprint or "",
        "recipe_runner.upstream": [
            f"{u.get('name')}:{u.get('type')}:{u.get('fingerprint')}" for u in lin.get("upstream", [])
        ],
        "recipe_runner.lineage": json.dumps(lin, sort_keys=True, default=str),
    }
    versions = lin.get("versions") or {}
    if versions.get("recipe-runner") or versions.get("recipe_runner"):
        meta["recipe_runner.version"] = str(versions.get("recipe-runner") or versions.get("recipe_runner"))
    desc = f"{gguf_type.upper()} GGUF written by recipe-runner"
    if recipe:
        desc += f" from recipe '{recipe}'"
    if stage.get("name"):
        desc += f", stage '{stage['name']}' (fingerprint {str(stage.get('fingerprint', ''))[:12]})"
    return meta, desc
