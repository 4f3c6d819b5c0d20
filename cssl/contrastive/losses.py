"""In-batch pool (SimCLR's NT-Xent): local anchors against the views of the global batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cssl import distributed
from cssl.contrastive.estimators import at_least_fp32, info_nce


def in_batch_similarities(z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Similarities of the 2B local anchors with the 2B_g gathered views, with positive and mask.

    Candidates are ordered [view 1 of ranks 0..P-1, view 2 of ranks 0..P-1], gathered with gradient. Local
    anchor i of view 1 sits at column r*B + i (r = global rank) and its positive at B_g + r*B + i; view 2
    mirrors that. Self and positive columns are masked out of the negatives.

    Returns:
        pos (2B,), sim (2B, 2B_g) and neg_mask (2B, 2B_g), True on the 2B_g - 2 negatives of each row.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (B, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    with torch.autocast(device_type=z1.device.type, enabled=False):
        b = z1.shape[0]
        z1 = F.normalize(at_least_fp32(z1), dim=1)  # (B, D)
        z2 = F.normalize(at_least_fp32(z2), dim=1)  # (B, D)
        anchors = torch.cat([z1, z2])  # (2B, D)
        candidates = torch.cat([distributed.gather_with_grad(z1), distributed.gather_with_grad(z2)])  # (2Bg, D)
        b_global = candidates.shape[0] // 2
        sim = anchors @ candidates.T  # (2B, 2Bg)
        local = torch.arange(b, device=z1.device) + distributed.rank() * b  # (B,) global row index
        self_col = torch.cat([local, local + b_global])  # (2B,)
        pos_col = torch.cat([local + b_global, local])  # (2B,)
        rows = torch.arange(2 * b, device=z1.device)
        pos = sim[rows, pos_col]  # (2B,)
        neg_mask = torch.ones_like(sim, dtype=torch.bool)
        neg_mask[rows, self_col] = False
        neg_mask[rows, pos_col] = False
    return pos, sim, neg_mask


def nt_xent(
    z1: Tensor,
    z2: Tensor,
    temperature: float,
    *,
    estimator: str = "infonce",
    tau_plus: float = 0.0,
    beta: float = 0.0,
) -> Tensor:
    """SimCLR's NT-Xent loss (or its DCL/HCL estimate) over the 2B local anchors, mean convention.

    Each anchor's positive is its other view; every other view of both augmentation sets in the global
    batch is a negative (N = 2B_g - 2); the anchor itself is masked out. The official TF code reports twice
    this value (loss_a + loss_b).

    Args:
        z1, z2: (B, D) projections of the two views; L2-normalised here in fp32.
        temperature: t > 0.
        estimator, tau_plus, beta: see :func:`cssl.contrastive.info_nce`.

    Returns:
        Scalar fp32 loss.
    """
    pos, sim, neg_mask = in_batch_similarities(z1, z2)
    return info_nce(pos, sim, temperature, estimator=estimator, tau_plus=tau_plus, beta=beta, neg_mask=neg_mask)
