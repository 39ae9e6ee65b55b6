"""LLM-as-a-judge for instruction-tuned models, as the instruction-tuning
tutorials do it (the eval stage's ``judge:`` section).

Two modes:

- ``score``: the judge scores each response 0-100 against the reference
  answer with the prompt of rasbt's LLMs-from-scratch, chapter 7.
- ``compare``: the judge sees two models' responses to the same instruction
  and picks the better one; every pair is asked twice with the order swapped,
  only verdicts that agree in both orders count, and the flips (position
  bias) are reported.

The judge is either a causal LM (a local directory or a hub id, run with
transformers) or an OpenAI-compatible chat-completions endpoint (``base_url``,
``model``; the API key is read from the environment variable the recipe
names, never from the recipe itself).

Modules: ``params`` (the ``judge:`` section), ``prompts`` (the judge's and the
evaluated models' prompts), ``instructions`` (the instruction records and the
saved verdict table), ``responses`` (the evaluated models' answers),
``judges`` (local model or endpoint), ``verdicts`` (reading the judge's
answers), ``judging`` (score / compare, and the whole judge step).
"""
