"""An EMA copy of the online (backbone, projector) that encodes keys (MoCo, MoChi, AdCo) or targets (BYOL):
the one momentum pair of these methods, stepped by :meth:`cssl.methods.base.Method.step_momentum_pairs`."""

from __future__ import annotations

from typing import Any

import torch.nn as nn
import torch.nn.functional as F
from pytorch_lightning.accelerators import CPUAccelerator
from torch import Tensor

from cssl.contrastive.estimators import at_least_fp32
from cssl.contrastive.momentum import MomentumEncoder, check_key_bn, encode_keys
from cssl.core.errors import check
from cssl.models.heads import mlp


class MomentumTarget:
    """Mixin of a :class:`~cssl.methods.base.Method`: an online projector and the EMA copy of (backbone,
    projector) with its momentum schedule and the BN mode of its forward.

    Args:
        momentum: m of the EMA, in [0, 1].
        momentum_schedule: ``constant``, or ``cosine`` (m rises to ``momentum_end`` over training).
        momentum_end: final m of the cosine schedule (1.0: m rises to 1).
        key_bn: BN mode of the key forward (:func:`cssl.contrastive.momentum.encode_keys`); ``sync`` converts
            the copy's BN layers to SyncBatchNorm.
        key_bn_splits: chunks of the ``split`` mode.
        proj_hidden_dim, proj_output_dim, proj_layers, proj_batch_norm: projector MLP (MoCo v2's has no BN).
        **kwargs: the next class's arguments (the method base, and the negatives of a contrastive method).
    """

    backbone: nn.Module
    num_features: int

    def __init__(
        self,
        backbone: nn.Module,
        *,
        momentum: float = 0.999,
        momentum_schedule: str = "constant",
        momentum_end: float = 1.0,
        key_bn: str = "auto",
        key_bn_splits: int = 8,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 128,
        proj_layers: int = 2,
        proj_batch_norm: bool = False,
        **kwargs: Any,
    ) -> None:
        check_key_bn(key_bn, key_bn_splits)
        super().__init__(backbone, **kwargs)  # type: ignore[call-arg]
        self.key_bn, self.key_bn_splits = key_bn, key_bn_splits
        self.projector = mlp(
            self.num_features, proj_hidden_dim, proj_output_dim, num_layers=proj_layers, batch_norm=proj_batch_norm
        )
        self.key_encoder = MomentumEncoder(
            self._online(), momentum=momentum, schedule=momentum_schedule, momentum_end=momentum_end
        )
        if key_bn == "sync":
            self.key_encoder.encoder = nn.SyncBatchNorm.convert_sync_batchnorm(self.key_encoder.encoder)

    def setup(self, stage: str) -> None:
        trainer = self.trainer  # type: ignore[attr-defined]
        on_cpu = isinstance(trainer.accelerator, CPUAccelerator)
        check(
            not (self.key_bn == "sync" and on_cpu and trainer.world_size > 1),
            "method.key_bn=sync needs GPUs (SyncBatchNorm has no CPU kernel); use method.key_bn=shuffle",
        )

    def _online(self) -> nn.Module:
        """The online (backbone, projector) pair, in the parameter order of the key encoder."""
        return nn.Sequential(self.backbone, self.projector)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self._online(), self.key_encoder)]

    def current_momentum(self, step: int | None = None) -> float:
        """m of the EMA at this optimiser step, or at ``step`` (constant, or cosine-increased over the run)."""
        step = self.global_step if step is None else step  # type: ignore[attr-defined]
        return self.key_encoder.momentum_at(step, self.total_steps())  # type: ignore[attr-defined]

    def keys(self, x: Tensor) -> Tensor:
        """Unit keys (B, D) of the EMA copy in fp32, no gradient; shuffle BN across ranks under DDP, split BN
        on one device (``key_bn``)."""
        k = encode_keys(self.key_encoder, x, key_bn=self.key_bn, splits=self.key_bn_splits)  # (B, D)
        return F.normalize(at_least_fp32(k), dim=1)
