"""SimCLR (Chen et al. 2020): in-batch pool + an estimator. With ``estimator="dcl"`` it is DCL
(Chuang et al. 2020); with ``"hcl"``, HCL (Robinson et al. 2021)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cssl.contrastive import in_batch_similarities, nt_xent
from cssl.heads import mlp
from cssl.methods.base import ContrastiveMethod


class SimCLR(ContrastiveMethod):
    """In-batch negatives gathered across ranks with gradient.

    Args:
        temperature: t of the loss; the estimator (``infonce`` for SimCLR, ``dcl``, ``hcl``) and its
            parameters are :class:`ContrastiveMethod` arguments.
        proj_hidden_dim, proj_output_dim, proj_layers: projector MLP.
        **kwargs: :class:`ContrastiveMethod` arguments.
    """

    def __init__(
        self,
        backbone: Any,
        *,
        temperature: float = 0.5,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 128,
        proj_layers: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, temperature=temperature, **kwargs)
        self.projector = mlp(self.num_features, proj_hidden_dim, proj_output_dim, num_layers=proj_layers)

    def contrastive_step(self, views: list[Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        b = views[0].shape[0]
        feats, z = self.encode_views(views[:2], self.projector)  # (2B, F), (2B, D): one pass or one per view
        beta = self.current_beta()
        loss = nt_xent(z[:b], z[b:], self.temperature, estimator=self.estimator, tau_plus=self.tau_plus, beta=beta)
        logs = {}
        if self.diagnose():
            with torch.no_grad():  # one more similarity product every few steps, no extra forward
                pos, sim, mask = in_batch_similarities(z[:b].detach(), z[b:].detach())
            logs = self.negative_diagnostics(pos, sim, mask)
        return loss, feats[:b], logs
