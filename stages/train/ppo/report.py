"""What a PPO run reports: the log line of an iteration, the summary metrics
(reward before / after, KL), sample responses to held-out prompts, and next to
the model its per-iteration statistics (ppo_history.jsonl) and a plot of the
mean reward and the KL to the reference (reward.png)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any


def log_iteration(log: logging.Logger, stats: dict[str, Any]) -> None:
    log.info(
        "ppo step %d: reward %.4f, kl %.4f, kl_coef %.4f, pg_loss %.4f, vf_loss %.4f, "
        "clipfrac %.3f, response length %.1f",
        stats["step"],
        stats["score_mean"],
        stats["kl"],
        stats["kl_coef"],
        stats.get("pg_loss", 0.0),
        stats.get("vf_loss", 0.0),
        stats.get("pg_clipfrac", 0.0),
        stats["response_length"],
    )


def summary_metrics(history: list[dict[str, Any]], before: float, after: float, steps: int) -> dict[str, Any]:
    """Mean held-out reward before / after and its gain, the last KL and KL
    coefficient, and the first and last mean training reward."""
    last = history[-1] if history else {}
    return {
        "reward_before": before,
        "reward_after": after,
        "reward_gain": after - before,
        "kl": last.get("kl"),
        "kl_coef": last.get("kl_coef_next"),
        "steps": steps,
        "train_reward_first": history[0]["score_mean"] if history else None,
        "train_reward_last": last.get("score_mean"),
    }


def sample_metrics(tok: Any, queries: list[list[int]], responses: list[list[int]]) -> list[dict[str, str]]:
    """Prompt (its end) and response (its start) of each sample, as text."""
    return [
        {
            "prompt": tok.decode(q, skip_special_tokens=True)[-200:],
            "response": tok.decode(r, skip_special_tokens=True)[:300],
        }
        for q, r in zip(queries, responses, strict=True)
    ]


def write_history(history: list[dict[str, Any]], out: Path) -> None:
    """ppo_history.jsonl (one line of statistics per iteration) and reward.png."""
    with (out / "ppo_history.jsonl").open("w") as f:
        for h in history:
            f.write(json.dumps(h) + "\n")
    _plot(history, out / "reward.png")


def _plot(history: list[dict[str, Any]], png: Path) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    steps = [h["step"] for h in history]
    ax[0].plot(steps, [h["score_mean"] for h in history])
    ax[0].set_title("mean reward")
    ax[1].plot(steps, [h["kl"] for h in history])
    ax[1].set_title("KL to reference")
    for a in ax:
        a.set_xlabel("PPO step")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
