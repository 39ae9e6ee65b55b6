"""Applications on what a recipe built: ``recipe chat`` (a terminal chat or
completion loop) and ``recipe serve`` (an OpenAI-compatible HTTP server).

- :mod:`.models` finds a run's model artifact (the last committed model,
  adapter or GGUF file, a named stage, or a path) and loads it;
- :mod:`.generation` streams text from it (transformers or llama.cpp), one
  request at a time;
- :mod:`.chat` and :mod:`.serve` are the two front ends; :mod:`.openai_schema`
  holds the OpenAI request and response shapes the server speaks.

Nothing here imports torch, transformers or fastapi at module level, so
``recipe --help`` stays fast."""
