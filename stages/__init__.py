"""recipe-runner's built-in stage plugins (installed as ``recipe_runner_stages``).

Importing this package stays cheap: no heavy library is imported here.  The
runner shows its own progress; the Hugging Face libraries' tqdm bars would
only interleave with it (and flood CI logs), so they are off unless the user
sets these variables."""

import os

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
