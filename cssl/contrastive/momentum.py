"""Momentum (EMA) encoder, shared by MoCo, MoChi and AdCo."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
from torch import Tensor

from cssl.errors import ConfigError, check_unit_interval

SCHEDULES = ("constant", "cosine")


class MomentumEncoder(nn.Module):
    """A frozen copy of ``online`` updated as an exponential moving average of its parameters.

    Parameters and BN buffers are copied at construction; afterwards only parameters follow the EMA and
    BN statistics are the key encoder's own (as in MoCo's official code).

    Args:
        online: the online module (e.g. ``nn.Sequential(backbone, projector)``); not stored, only copied.
        momentum: m of the EMA, in [0, 1]: k <- m * k + (1 - m) * q.
        schedule: ``constant``, or ``cosine`` (m rises to 1 over the run, as in BYOL).
    """

    def __init__(self, online: nn.Module, *, momentum: float = 0.999, schedule: str = "constant") -> None:
        super().__init__()
        check_unit_interval("method.momentum", momentum, closed_right=True)
        if schedule not in SCHEDULES:
            raise ConfigError(f"method.momentum_schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        self.base_momentum, self.schedule = momentum, schedule
        self.encoder = copy.deepcopy(online).requires_grad_(False)

    def momentum_at(self, step: int, total_steps: int) -> float:
        """m at ``step`` of ``total_steps`` (constant, or cosine-increased from the base value to 1)."""
        if self.schedule == "constant" or total_steps <= 0:
            return self.base_momentum
        progress = min(1.0, step / total_steps)
        return 1 - (1 - self.base_momentum) * (math.cos(math.pi * progress) + 1) / 2

    @torch.no_grad()
    def update(self, online: nn.Module, momentum: float) -> None:
        """k <- m * k + (1 - m) * q for every parameter pair (``online`` must mirror the copy)."""
        key_params = list(self.encoder.parameters())
        online_params = [p.detach() for p in online.parameters()]
        if len(key_params) != len(online_params):
            raise ValueError("online module does not match the momentum encoder")
        torch._foreach_mul_(key_params, momentum)
        torch._foreach_add_(key_params, online_params, alpha=1 - momentum)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.encoder(x)

    def train(self, mode: bool = True) -> MomentumEncoder:
        # BN of the key encoder normalises with batch statistics like the online one (MoCo), so it
        # follows the module's mode; gradients stay off.
        return super().train(mode)
