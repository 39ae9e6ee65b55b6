"""TruthfulQA multiple choice (mc1 / mc2) from the shipped CSV
(recipes/data/TruthfulQA.csv), for lm-eval offline.

mc2 follows lm-eval's ``truthfulqa_mc2``: every true and false answer is
scored by log-likelihood after the question (in the paper's 6-shot QA
prompt), and the score is the normalised probability mass on the true ones.
The targets come from the CSV: "Correct Answers" are true, "Incorrect
Answers" false (both "; "-separated), each closed with a period as in the
TruthfulQA repository's ``split_multi_answer``.  mc1 puts the "Best Answer"
against the incorrect ones (accuracy of the single best choice).

The data file resolves relative to this module, so it works wherever the
package is installed; ``dataset_kwargs: {data_file: ...}`` overrides it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATA_FILE = Path(__file__).resolve().parents[2] / "data" / "TruthfulQA.csv"


def _answers(cell: str | None) -> list[str]:
    out = []
    for ans in (cell or "").split(";"):
        ans = ans.strip()
        if ans:
            out.append(ans if ans.endswith(".") else ans + ".")
    return out


def _targets(batch: dict) -> dict:
    mc1, mc2 = [], []
    for best, true, false in zip(
        batch["Best Answer"], batch["Correct Answers"], batch["Incorrect Answers"], strict=True
    ):
        t, f = _answers(true), _answers(false)
        b = _answers(best)[:1]
        mc1.append({"choices": b + f, "labels": [1] * len(b) + [0] * len(f)})
        mc2.append({"choices": t + f, "labels": [1] * len(t) + [0] * len(f)})
    return {"question": batch["Question"], "mc1_targets": mc1, "mc2_targets": mc2}


def load(data_file: str | None = None, **_: object):
    """lm-eval ``custom_dataset``: a DatasetDict with a 'validation' split."""
    import datasets
    import pandas as pd

    path = Path(data_file) if data_file else DATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"TruthfulQA CSV not found at {path}")
    frame = pd.read_csv(path, keep_default_na=False)
    ds = datasets.Dataset.from_pandas(frame, preserve_index=False)
    ds = ds.map(_targets, batched=True, remove_columns=ds.column_names)
    return datasets.DatasetDict({"validation": ds})


def process_results_mc2(doc: dict, results: list) -> dict:
    lls = np.array([r[0] for r in results], dtype=np.float64)
    labels = np.array(doc["mc2_targets"]["labels"])
    # softmax over all answers in log space (stable), mass on the true ones
    probs = np.exp(lls - lls.max())
    probs /= probs.sum()
    return {"acc": float(probs[labels == 1].sum())}
