"""BYOL's negative-free regression loss (Grill et al. 2020): the online prediction of one view regresses
the target projection of the other view; no negatives, so no pool, transform or estimator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cssl.contrastive.estimators import at_least_fp32


def regression_cosine(p: Tensor, z: Tensor) -> Tensor:
    """Per-row cos(p, sg(z)) in fp32 (autocast off): (B, D), (B, D) -> (B,). The target gets no gradient."""
    with torch.autocast(device_type=p.device.type, enabled=False):
        p = F.normalize(at_least_fp32(p), dim=1)  # (B, D)
        z = F.normalize(at_least_fp32(z.detach()), dim=1).to(p.dtype)  # (B, D)
        return (p * z).sum(1)  # (B,)


def byol_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """Symmetric BYOL loss, the official value in [0, 8]: mean_b [2 - 2 cos(p1, z2) + 2 - 2 cos(p2, z1)].

    ``2 - 2 cos`` is the squared distance of the unit vectors; the two directions are summed, as in the
    official code and solo-learn (so the value is twice a mean over 2B anchors).

    Args:
        p1, p2: (B, D) online predictions of views 1 and 2.
        z1, z2: (B, D) target projections of views 1 and 2 (detached here).

    Returns:
        Scalar loss in fp32 (at least).

    Example:
        >>> z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> byol_loss(z, -z, z, z).item(), byol_loss(z, 3 * z, z, z).item()
        (4.0, 0.0)
    """
    return (4 - 2 * regression_cosine(p1, z2) - 2 * regression_cosine(p2, z1)).mean()
