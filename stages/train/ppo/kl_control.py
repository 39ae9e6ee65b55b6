"""The KL penalty coefficient beta of PPO for language models: adaptive
(Ziegler et al. 2019, as in trl's classic PPO) or fixed."""

from __future__ import annotations

import numpy as np


class AdaptiveKLController:
    """Adaptive KL controller of Ziegler et al. 2019 (as in trl's classic PPO):
    beta *= 1 + clip(KL / target - 1, +-0.2) * n_steps / horizon."""

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current: float, n_steps: int) -> None:
        proportional_error = float(np.clip(current / self.target - 1, -0.2, 0.2))
        self.value *= 1 + proportional_error * n_steps / self.horizon


class FixedKLController:
    """A constant beta."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current: float, n_steps: int) -> None:
        pass


KLController = AdaptiveKLController | FixedKLController
