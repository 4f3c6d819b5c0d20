"""SimCLR (Chen et al. 2020): in-batch pool + an estimator. With ``estimator="dcl"`` it is DCL
(Chuang et al. 2020); with ``"hcl"``, HCL (Robinson et al. 2021)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cssl.contrastive import check_estimator, in_batch_similarities, nt_xent
from cssl.contrastive.estimators import annealed_beta
from cssl.heads import mlp
from cssl.methods.base import ContrastiveMethod


class SimCLR(ContrastiveMethod):
    """In-batch negatives gathered across ranks with gradient.

    Args:
        temperature: t of the loss.
        estimator: ``infonce`` (SimCLR), ``dcl`` or ``hcl``.
        tau_plus, beta: estimator parameters (see :func:`cssl.contrastive.info_nce`).
        beta_anneal: lower HCL's beta to 0 in 9 steps over training (:func:`annealed_beta`).
        proj_hidden_dim, proj_output_dim, proj_layers: projector MLP.
        **kwargs: :class:`ContrastiveMethod` arguments.
    """

    def __init__(
        self,
        backbone: Any,
        *,
        temperature: float = 0.5,
        estimator: str = "infonce",
        tau_plus: float = 0.0,
        beta: float = 0.0,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 128,
        proj_layers: int = 2,
        beta_anneal: bool = False,
        **kwargs: Any,
    ) -> None:
        check_estimator(estimator, temperature, tau_plus, beta)
        super().__init__(backbone, **kwargs)
        self.temperature, self.estimator, self.tau_plus, self.beta = temperature, estimator, tau_plus, beta
        self.beta_anneal = beta_anneal
        self.projector = mlp(self.num_features, proj_hidden_dim, proj_output_dim, num_layers=proj_layers)

    def contrastive_step(self, views: list[Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        b = views[0].shape[0]
        feats = self.backbone(torch.cat(views[:2]))  # (2B, F): one pass, BN statistics over both views
        z = self.projector(feats)  # (2B, D)
        beta = self.current_beta()
        loss = nt_xent(z[:b], z[b:], self.temperature, estimator=self.estimator, tau_plus=self.tau_plus, beta=beta)
        logs = {"train/beta": torch.tensor(beta)} if self.beta_anneal else {}
        if self.diagnose():
            with torch.no_grad():  # one more similarity product every few steps, no extra forward
                pos, sim, mask = in_batch_similarities(z[:b].detach(), z[b:].detach())
            logs.update(self.negative_diagnostics(pos, sim, mask, beta=beta))
        return loss, feats[:b], logs

    def current_beta(self) -> float:
        if not self.beta_anneal:
            return self.beta
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return annealed_beta(self.beta, self.global_step / total)
