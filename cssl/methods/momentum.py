"""The shared part of the methods with a momentum key encoder (MoCo, MoChi, AdCo) or EMA target (BYOL)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_lightning.accelerators import CPUAccelerator
from torch import Tensor

from cssl.contrastive.estimators import at_least_fp32
from cssl.contrastive.momentum import MomentumEncoder, check_key_bn, encode_keys
from cssl.core.errors import check
from cssl.methods.base import ContrastiveMethod
from cssl.models.heads import mlp


class MomentumMethod(ContrastiveMethod):
    """Online backbone + projector, and their EMA copy that encodes the keys.

    Args:
        momentum: m of the key encoder's EMA, in [0, 1].
        momentum_schedule: ``constant``, or ``cosine`` (m rises to ``momentum_end`` over training).
        momentum_end: final m of the cosine schedule (1.0: m rises to 1).
        key_bn: BN mode of the key forward (:func:`cssl.contrastive.momentum.encode_keys`); ``sync`` converts
            the key encoder's BN layers to SyncBatchNorm.
        key_bn_splits: chunks of the ``split`` mode.
        proj_hidden_dim, proj_output_dim, proj_layers, proj_batch_norm: projector MLP (MoCo v2's has no BN).
        **kwargs: :class:`ContrastiveMethod` arguments.
    """

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
        super().__init__(backbone, **kwargs)
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
        on_cpu = isinstance(self.trainer.accelerator, CPUAccelerator)
        check(
            not (self.key_bn == "sync" and on_cpu and self.trainer.world_size > 1),
            "method.key_bn=sync needs GPUs (SyncBatchNorm has no CPU kernel); use method.key_bn=shuffle",
        )

    def _online(self) -> nn.Module:
        """The online (backbone, projector) pair, in the parameter order of the key encoder."""
        return nn.Sequential(self.backbone, self.projector)

    def current_momentum(self, step: int | None = None) -> float:
        """m of the EMA at this step, or at optimiser step ``step`` (constant, or cosine-increased over the run)."""
        trainer = self._trainer
        total = trainer.estimated_stepping_batches if trainer is not None else 0
        total = int(total) if math.isfinite(total) else 0
        return self.key_encoder.momentum_at(self.global_step if step is None else step, total)

    def fnc_support(self, keys: list[Tensor]) -> Tensor:
        """FNC's support set of each image from the momentum encoder (NEGATIVES.md 1.7): its keys (B, D) of
        the main views, then its extra support views' keys: (B, V + S, D)."""
        support = torch.stack([k.detach() for k in keys], dim=1)  # (B, V, D)
        extra = self.support_embeddings(self.keys)  # (B, S, D) or None
        return support if extra is None else torch.cat([support, extra.to(support.dtype)], dim=1)

    def keys(self, x: Tensor) -> Tensor:
        """Unit keys (B, D) of the key encoder in fp32, no gradient; shuffle BN across ranks under DDP,
        split BN on one device (``key_bn``)."""
        k = encode_keys(self.key_encoder, x, key_bn=self.key_bn, splits=self.key_bn_splits)  # (B, D)
        return F.normalize(at_least_fp32(k), dim=1)
