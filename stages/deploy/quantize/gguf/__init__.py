"""Hugging Face Llama-family model directory -> one GGUF file (llama.cpp's format).

Written with the ``gguf`` package (llama.cpp's own Python library): ``GGUFWriter``
for the container, ``TensorNameMap`` for llama.cpp's tensor names,
``gguf.quants.quantize`` for Q8_0/Q4_0/... blocks and ``SpecialVocab`` for
merges, special-token ids and the chat template.  The conversion follows
llama.cpp's ``convert_hf_to_gguf.py`` for ``LlamaForCausalLM``:

* q_proj / k_proj rows are permuted into llama.cpp's rotary layout (llama.cpp
  and transformers' GGUF loader un-permute them);
* 1-D tensors (norms) stay F32; a 2-D tensor whose rows are not a multiple of
  the block size (32) falls back to F16, as the converter does;
* with a 4-bit type the output projection is kept at Q8_0 (llama.cpp's
  ``llama-quantize`` keeps it at Q6_K, which gguf-py cannot write);
* byte-level BPE vocabularies are written as ``tokenizer.ggml.model = gpt2``
  (tokens in the byte alphabet, token types, merges); sentencepiece ones as
  ``llama`` (pieces, scores, token types).

Modules: ``hparams`` (file types, the model's config as llama.cpp's keys),
``vocab`` (the tokenizer), ``tensors`` (names, Q/K permutation, per-tensor
types), ``writer`` (:func:`~.writer.write_gguf`, the whole file),
``reader`` (metadata of a written file), ``lineage`` (the recipe's lineage as
metadata keys) and ``quantize_gguf`` (the quantize stage's gguf method).
Everything heavy is imported inside the functions.
"""
