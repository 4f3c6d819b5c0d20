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
from cssl.core.errors import check
from cssl.methods.momentum import MomentumMethod
from cssl.models.heads import mlp

#: Options of the contrastive objective; they have no meaning without negatives.
NEGATIVE_OPTIONS = ("temperature", "estimator", "tau_plus", "beta", "beta_anneal")
#: Prefixes of the negative-sampling transforms (false-negative cancellation, ring, hardness curriculum).
NEGATIVE_PREFIXES = ("fnc", "ring_", "curriculum")


class BYOL(MomentumMethod):
    """Online backbone + projector + predictor; EMA target backbone + projector (no predictor, no gradient).

    Args:
        momentum: tau_base of the target's EMA (0.99 solo-learn CIFAR, 0.996 the paper's ImageNet).
        momentum_schedule: ``cosine`` (tau rises from tau_base to 1 over training, BYOL's) or ``constant``.
        key_bn: BN mode of the target forward; ``none`` (default): the target's BN normalises each view with
            its own batch statistics in train mode, as the official code and solo-learn do.
        proj_hidden_dim, proj_output_dim: projector Linear-BN-ReLU-Linear (4096, 256).
        pred_hidden_dim: predictor Linear(256, 4096)-BN-ReLU-Linear(4096, 256).
        **kwargs: :class:`MomentumMethod` arguments (projector layers, key BN splits) and the base class's
            probe, kNN and diagnostics arguments. The contrastive ones (temperature, estimator, FNC, ring,
            curriculum) are refused: BYOL has no negatives.
    """

    uses_negatives = False

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
        refused = sorted(k for k in kwargs if k in NEGATIVE_OPTIONS or k.startswith(NEGATIVE_PREFIXES))
        check(not refused, f"method.{', method.'.join(refused)}: not applicable to byol, which has no negatives")
        check(
            isinstance(pred_hidden_dim, int) and pred_hidden_dim >= 1,
            f"method.pred_hidden_dim must be an integer >= 1, got {pred_hidden_dim!r}",
        )
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
        self.estimator = None  # no negatives, no estimator (run tags and summary.json say so)
        self.predictor = mlp(proj_output_dim, pred_hidden_dim, proj_output_dim, num_layers=2, batch_norm=True)
        self._ema_step = 0  # global step of the last target update

    # -- the step ------------------------------------------------------------------------------------
    def contrastive_step(self, views: list[Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
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

    def after_optimizer_step(self) -> None:
        """The target's EMA step after each optimiser step (once per step under gradient accumulation)."""
        step = self.global_step  # k + 1 after optimiser step k
        if step > self._ema_step:
            self.update_target(step - 1)
        self._ema_step = step

    def update_target(self, step: int) -> float:
        """xi <- tau_k xi + (1 - tau_k) theta over the (backbone, projector) parameters; returns tau_k."""
        tau = self.current_momentum(step)
        self.key_encoder.update(self._online(), tau)
        return tau


def projection_std(z: Tensor) -> Tensor:
    """Collapse monitor: std over the batch of the unit projections, averaged over views and dimensions.

    (V, B, D) -> scalar; about 1/sqrt(D) when healthy, 0 when every image maps to one point (solo-learn's
    ``z_std``).
    """
    return F.normalize(z.detach().float(), dim=-1).std(dim=1).mean()
