"""SimCLR (Chen et al. 2020): in-batch pool + an estimator. With ``estimator="dcl"`` it is DCL
(Chuang et al. 2020); with ``"hcl"``, HCL (Robinson et al. 2021)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cssl.contrastive import in_batch_similarities
from cssl.core import distributed
from cssl.methods.contrast import ContrastiveMethod
from cssl.models.heads import mlp


class SimCLR(ContrastiveMethod):
    """In-batch negatives gathered across ranks with gradient.

    Args:
        temperature: t of the loss; the estimator (``infonce`` for SimCLR, ``dcl``, ``hcl``) and the rest of
            the negatives are :class:`ContrastiveMethod` arguments.
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

    def contrast(self, views: list[Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        b = views[0].shape[0]
        feats, z = self.encode_views(views[:2], self.projector)  # (2B, F), (2B, D): one pass or one per view
        z1, z2 = z[:b], z[b:]  # (B, D) each
        loss = self.selected_loss(z1, z2) if self.negatives.selecting else self.negatives.in_batch_loss(z1, z2)
        logs = {}
        if self.diagnose():
            with torch.no_grad():  # one more similarity product every few steps, no extra forward
                logs = self.negative_diagnostics(*in_batch_similarities(z1.detach(), z2.detach()))
        return loss, feats[:b], logs

    def selected_loss(self, z1: Tensor, z2: Tensor) -> Tensor:
        """The loss with FNC and/or the ring over the gathered in-batch pool (the similarity matrix is built).

        Detection is per local image against the 2B_g gathered views, so top-k and threshold are global, as
        in the official FNC code (``objective.py:63-82``); its support set is the image's two projections
        (detached) and the projections of its extra support views (no gradient).
        """
        b = z1.shape[0]
        pos, sim, mask = in_batch_similarities(z1, z2)  # (2B,), (2B, 2B_g), (2B, 2B_g)
        options: dict[str, Any] = {}
        if self.negatives.fnc != "none":
            y = self.negatives.labels
            y_all = distributed.gather(y) if y is not None and self.negatives.diagnose else None  # (B_g,)
            options = {
                "support": self.negatives.support_set([z1, z2], lambda x: self.projector(self.backbone(x))),
                "candidates": torch.cat([distributed.gather(z1), distributed.gather(z2)]),  # (2B_g, D), no grad
                "image_of_row": torch.arange(2 * b, device=z1.device) % b,
                "labels": None if y_all is None else torch.cat([y, y]),
                "candidate_labels": None if y_all is None else torch.cat([y_all, y_all]),
            }
        selection = self.negatives.select(sim, mask, **options)
        return self.negatives.loss(pos, sim, selection.mask, selection.extra_pos)
