"""Training FLOP accounting and model FLOPs utilisation (MFU), shared by
bench/train_throughput.py and bench/gpu_check.py.

Convention (PaLM, Chowdhery et al. 2022, appendix B; the same as Chinchilla's
"6N" with the attention term written out):

    FLOPs per trained token = 6 * N  +  12 * L * H * Q * T

- ``N``: the parameters that take part in a matrix multiply, i.e. every
  parameter except the input-embedding table, which is a lookup (a gather, no
  FLOPs).  The LM head *is* a matmul (2 * d * V FLOPs per token forward), so it
  counts; with tied embeddings the one shared matrix counts once, as the head.
  (Kaplan et al.'s "non-embedding" N would also drop the head: for the
  TinySolar-248m shape, whose 32,000 x 1,024 head is 15% of the matmul FLOPs,
  that undercounts; "all parameters" would count the lookup as a matmul.)
  Norm weights are in N but are ~0.01% of it.
- ``12 * L * H * Q * T``: attention scores and the weighted sum of values
  (``Q K^T`` and ``A V``: 2 * 2 * T * H * Q per token and layer forward, x3 for
  forward + backward) with ``H`` query heads of size ``Q`` over rows of ``T``
  tokens.  Grouped-query attention does not change it (it shares K/V
  projections, already in N, not the score computation).  As in PaLM the full
  T x T matrix is counted, not the causal half a fused kernel computes.
- Recomputation (gradient checkpointing) is *not* counted: this is model FLOPs
  utilisation, not hardware FLOPs utilisation.

MFU = tokens/s * FLOPs per token / the device's peak dense bf16 FLOP/s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: peak dense (no sparsity) bf16 tensor-core FLOP/s by device-name fragment, from the vendors' data
#: sheets; the first fragment found in the device name wins, so more specific names come first
#: ("H100 PCIe" before "H100", "A100" before "A10", "L40S" before "L40" before "L4").
PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("GH200", 989e12),
    ("H200 NVL", 835e12),
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # H100 SXM5 ("NVIDIA H100 80GB HBM3")
    ("H800", 989e12),
    ("B200", 2250e12),
    ("B100", 1750e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX A6000", 155e12),
    ("MI300X", 1307e12),
    ("MI250X", 383e12),
    ("V100", 125e12),  # fp16: V100 has no bf16
)


def peak_bf16_flops(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s for a device name such as ``torch.cuda.get_device_name()``;
    None when the name is not in the table (pass the number yourself then)."""
    for fragment, flops in PEAK_BF16:
        if fragment.lower() in device_name.lower():
            return flops
    return None


def matmul_parameters(num_parameters: int, vocab_size: int, hidden_size: int, tie_word_embeddings: bool) -> int:
    """N of the 6N term: all parameters but the input-embedding lookup table (with tied embeddings the
    shared matrix is the LM head's and stays)."""
    return num_parameters if tie_word_embeddings else num_parameters - vocab_size * hidden_size


def flops_per_token(n_matmul: int, layers: int, heads: int, head_dim: int, seq_len: int) -> int:
    """Training FLOPs per token: 6N + 12 * L * H * Q * T (forward + backward)."""
    return 6 * n_matmul + 12 * layers * heads * head_dim * seq_len


def model_flops_per_token(config: Mapping[str, Any], num_parameters: int, seq_len: int) -> dict[str, int]:
    """FLOPs per token for a Hugging Face decoder config (a config.json as a dict) with ``num_parameters``
    parameters in all, trained on rows of ``seq_len`` tokens; returns the terms too."""
    text = config.get("text_config") or config
    hidden = int(text["hidden_size"])
    heads = int(text["num_attention_heads"])
    head_dim = int(text.get("head_dim") or hidden // heads)
    layers = int(text["num_hidden_layers"])
    vocab = int(text["vocab_size"])
    tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    n = matmul_parameters(num_parameters, vocab, hidden, tied)
    attention = 12 * layers * heads * head_dim * seq_len
    return {
        "n_matmul": n,
        "n_total": num_parameters,
        "dense_flops_per_token": 6 * n,
        "attention_flops_per_token": attention,
        "flops_per_token": 6 * n + attention,
    }
