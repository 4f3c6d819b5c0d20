"""BYOL (Grill et al. 2020): the negative-free control. The online network (backbone, projector, predictor)
regresses the projection of the other view by an EMA target (backbone, projector); no pool of negatives.

One step: a forward of each view through the online network (BN statistics per view, as solo-learn) and the
target, the symmetric loss mean_b [2 - 2 cos(p1, sg z2') + 2 - 2 cos(p2, sg z1')] in fp32, and after the
optimiser step k the EMA xi <- tau_k xi + (1 - tau_k) theta with tau_k = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2
(NEGATIVES.md section 3; solo-learn solo/methods/byol.py, solo/utils/momentum.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from cssl.contrastive.bootstrap import byol_loss
from cssl.core.errors import check_int
from cssl.methods.base import Method
from cssl.methods.target import MomentumTarget
from cssl.models.heads import mlp


class BYOL(MomentumTarget, Method):
    """Online backbone + projector + predictor; EMA target backbone + projector (no predictor, no gradient).

    Args:
        momentum: tau_base of the target's EMA (0.99 solo-learn CIFAR, 0.996 the paper's ImageNet).
        momentum_schedule: ``cosine`` (tau rises from tau_base to 1 over training, BYOL's) or ``constant``.
        key_bn: BN mode of the target forward; ``none`` (default): the target's BN normalises each view with
            its own batch statistics in train mode, as the official code and solo-learn do.
        proj_hidden_dim, proj_output_dim: projector Linear-BN-ReLU-Linear (4096, 256).
        pred_hidden_dim: predictor Linear(256, 4096)-BN-ReLU-Linear(4096, 256).
        **kwargs: :class:`MomentumTarget` arguments (projector layers, key BN splits) and the method base's
            probe, kNN and diagnostics arguments. BYOL has no negatives: it takes none of their options.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        momentum: float = 0.99,
        momentum_schedule: str = "cosine",
        key_bn: str = "none",
        proj_hidden_dim: int = 4096,
        proj_output_dim: int = 256,
        proj_batch_norm: bool = True,
        pred_hidden_dim: int = 4096,
        **kwargs: Any,
    ) -> None:
        check_int("method.pred_hidden_dim", pred_hidden_dim, 1)
        super().__init__(
            backbone,
            momentum=momentum,
            momentum_schedule=momentum_schedule,
            key_bn=key_bn,
            proj_hidden_dim=proj_hidden_dim,
            proj_output_dim=proj_output_dim,
            proj_batch_norm=proj_batch_norm,
            **kwargs,
        )
        self.predictor = mlp(proj_output_dim, pred_hidden_dim, proj_output_dim, num_layers=2, batch_norm=True)

    # -- the step ------------------------------------------------------------------------------------
    def ssl_step(
        self, views: list[Tensor], support: list[Tensor] | None = None, labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        feats = [self.backbone(v) for v in views[:2]]  # 2 x (B, F): one forward per view
        z = [self.projector(f) for f in feats]  # 2 x (B, D)
        p = [self.predictor(x) for x in z]  # 2 x (B, D)
        targets = [self.keys(v) for v in views[:2]]  # 2 x (B, D): unit, fp32, no gradient
        loss = byol_loss(p[0], p[1], targets[0], targets[1])
        value = loss.detach()
        logs = {"byol/loss": value, "byol/cos": 1 - value / 4, "byol/tau": torch.tensor(self.current_momentum())}
        if self.diagnose():
            logs["byol/z_std"] = projection_std(torch.stack(z))
        return loss, feats[0], logs


def projection_std(z: Tensor) -> Tensor:
    """Collapse monitor: std over the batch of the unit projections, averaged over views and dimensions.

    (V, B, D) -> scalar; about 1/sqrt(D) when healthy, 0 when every image maps to one point (solo-learn's
    ``z_std``).
    """
    return F.normalize(z.detach().float(), dim=-1).std(dim=1).mean()
