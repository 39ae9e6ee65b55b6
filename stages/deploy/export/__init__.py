"""The ``export`` stage: ``stage`` (the plugin and its parameters),
``model_card`` (README.md with lineage and evaluation results) and
``hub_push`` (the optional push to the Hugging Face hub)."""
