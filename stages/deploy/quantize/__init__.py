"""The ``quantize`` stage: ``stage`` (the plugin), ``params``, one module per
method family (``gguf/`` for llama.cpp files, ``int8`` through torchao,
``bnb`` through bitsandbytes, ``gptq`` through GPTQModel, the last three
written and read back by ``hf_method``), and ``quality`` (the before/after
comparison)."""
