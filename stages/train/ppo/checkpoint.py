"""PPO's resume point: the engine's state (trainable weights, optimizer, KL
coefficient), the iteration reached, the statistics so far and the reward
measured before training, in one file replaced atomically."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine import PPOEngine


@dataclass
class PPOProgress:
    """Where a PPO run stands: the next iteration, each finished iteration's
    statistics, and the held-out reward before training (None until measured)."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    reward_before: float | None = None


class PPOCheckpoint:
    """``ppo_state.pt`` in the stage's checkpoint directory."""

    def __init__(self, checkpoint_dir: Path):
        self.path = Path(checkpoint_dir) / "ppo_state.pt"

    def load(self, engine: PPOEngine) -> PPOProgress | None:
        """Restore the engine from the checkpoint and return the progress saved with it (None: no checkpoint)."""
        import torch

        if not self.path.is_file():
            return None
        state = torch.load(self.path, map_location=engine.device, weights_only=False)
        engine.load_state_dict(state["engine"])
        return PPOProgress(state["step"], state["history"], state.get("reward_before"))

    def save(self, engine: PPOEngine, progress: PPOProgress, step: int) -> None:
        import torch

        tmp = self.path.with_suffix(".tmp")
        state = {
            "engine": engine.state_dict(),
            "step": step,
            "history": progress.history,
            "reward_before": progress.reward_before,
        }
        torch.save(state, tmp)
        os.replace(tmp, self.path)
