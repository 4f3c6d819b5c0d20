"""Momentum (EMA) encoder, shared by MoCo, MoChi and AdCo."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
from torch import Tensor

from cssl.core import distributed
from cssl.core.errors import ConfigError, check, check_unit_interval, is_int

SCHEDULES = ("constant", "cosine")
KEY_BN = ("auto", "shuffle", "split", "sync", "none")


class MomentumEncoder(nn.Module):
    """A frozen copy of ``online`` updated as an exponential moving average of its parameters.

    Parameters and BN buffers are copied at construction; afterwards only parameters follow the EMA and
    BN statistics are the key encoder's own (as in MoCo's official code).

    Args:
        online: the online module (e.g. ``nn.Sequential(backbone, projector)``); not stored, only copied.
        momentum: m of the EMA, in [0, 1]: k <- m * k + (1 - m) * q.
        schedule: ``constant``, or ``cosine`` (m rises to ``momentum_end`` over the run, as in BYOL).
        momentum_end: final m of the cosine schedule, in [``momentum``, 1] (1 as in BYOL; solo-learn's MoCo v2+
            uses 0.99 -> 0.999).
    """

    def __init__(
        self,
        online: nn.Module,
        *,
        momentum: float = 0.999,
        schedule: str = "constant",
        momentum_end: float = 1.0,
    ) -> None:
        super().__init__()
        check_unit_interval("method.momentum", momentum, closed_right=True)
        check_unit_interval("method.momentum_end", momentum_end, closed_right=True)
        if schedule not in SCHEDULES:
            raise ConfigError(f"method.momentum_schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        check(
            schedule != "cosine" or momentum_end >= momentum,
            f"method.momentum_end ({momentum_end}) must be >= method.momentum ({momentum}) with the cosine schedule",
        )
        self.base_momentum, self.schedule, self.end_momentum = momentum, schedule, momentum_end
        self.encoder = copy.deepcopy(online).requires_grad_(False)

    def momentum_at(self, step: int, total_steps: int) -> float:
        """m at ``step`` of ``total_steps`` (constant, or cosine-increased from the base value to ``momentum_end``)."""
        if self.schedule == "constant" or total_steps <= 0:
            return self.base_momentum
        progress = min(1.0, step / total_steps)
        end = self.end_momentum
        return end - (end - self.base_momentum) * (math.cos(math.pi * progress) + 1) / 2

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


def check_key_bn(key_bn: str, splits: int) -> None:
    """Validate ``method.key_bn`` and ``method.key_bn_splits``."""
    check(key_bn in KEY_BN, f"method.key_bn must be one of {', '.join(KEY_BN)}, got {key_bn!r}")
    check(
        is_int(splits) and splits >= 1,
        f"method.key_bn_splits must be an integer >= 1, got {splits!r}",
    )


def resolve_key_bn(key_bn: str) -> str:
    """``auto`` -> ``shuffle`` under several processes, ``split`` on one; other modes unchanged."""
    if key_bn == "auto":
        return "shuffle" if distributed.world_size() > 1 else "split"
    return key_bn


@torch.no_grad()
def encode_keys(encoder: nn.Module, x: Tensor, *, key_bn: str, splits: int = 8) -> Tensor:
    """Key forward that keeps BN statistics of the keys from leaking the queries' batch (MoCo's shuffle BN).

    Args:
        encoder: the key encoder (no gradient is recorded).
        x: (B, ...) this rank's key views.
        key_bn: ``shuffle``: the global batch is permuted across ranks before the forward and restored after,
            so each rank's BN sees other images than its queries (plain BN on one process); ``split``: on one
            device, a random permutation of the batch goes through the encoder in ``splits`` chunks of at
            least 2 images, each with its own BN statistics; ``sync`` / ``none``: one plain forward (SyncBN
            layers, if converted, synchronise themselves); ``auto``: see :func:`resolve_key_bn`.
        splits: number of chunks of ``split``.

    Returns:
        (B, D) encoder outputs in the original row order.
    """
    mode = resolve_key_bn(key_bn)
    if mode == "shuffle":
        shuffled, undo = distributed.shuffle_batch(x)  # (B, ...), (P*B,)
        return distributed.unshuffle_batch(encoder(shuffled), undo)  # (B, D)
    if mode == "split":
        b = x.shape[0]
        chunks = max(1, min(splits, b // 2))
        perm = torch.randperm(b, device=x.device)  # (B,)
        out = torch.cat([encoder(part) for part in x[perm].tensor_split(chunks)])  # (B, D), permuted order
        return out[torch.argsort(perm)]  # (B, D)
    return encoder(x)  # (B, D)
