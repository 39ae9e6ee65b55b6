"""The ``quantize`` stage's parameters."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from recipe_runner import Params

from ...common.devices import cpu_threads_field

GGUFType = Literal["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"]
Method = Literal["gguf", "int8", "gptq", "bnb"]


class QuantizeParams(Params):
    method: Method = Field(
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
    bits: Literal[2, 3, 4, 8] = Field(4, description="weight bits for gptq (2, 3, 4, 8) and bnb (4 or 8)")
    group_size: int = Field(
        128,
        ge=-1,
        description="GPTQ quantization group size (columns sharing one scale, at least 1); -1 for per-channel",
    )
    desc_act: bool | None = Field(
        None, description="GPTQ act-order (quantize columns by decreasing activation); null: GPTQModel's default"
    )
    calibration_samples: int = Field(
        128, ge=1, description="GPTQ calibration sequences taken from the dataset input's train split"
    )
    calibration_seq_len: int = Field(512, ge=16, description="tokens per GPTQ calibration sequence")
    calibration_batch_size: int = Field(1, ge=1, description="GPTQ calibration batch size")
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field("nf4", description="bitsandbytes 4-bit data type (bits: 4)")
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
    max_new_tokens: int = Field(32, ge=0, description="tokens generated for the sample (0 skips it)")
    cpu_threads: int | None = cpu_threads_field()
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where gptq/bnb quantize and where 'before' is evaluated; gguf and int8 run on CPU"
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto",
        description="dtype of the source model for the 'before' measurement and of bnb's compute; 'auto': bf16 "
        "on a GPU that has it, else fp32",
    )

    @field_validator("group_size")
    @classmethod
    def _check_group_size(cls, v: int) -> int:
        if v == 0:
            raise ValueError("group_size 0 is not valid: a group of at least 1 column, or -1 for per-channel")
        return v
