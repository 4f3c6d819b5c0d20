"""Independent float64 reference formulations of the losses, written as plain loops over anchors in
linear space (no logsumexp, no masks-as--inf), straight from the formulas of METHODS.md."""

from __future__ import annotations

import math

import numpy as np


def reference_loss(
    pos: np.ndarray, neg_rows: list[np.ndarray], t: float, estimator: str, tau_plus: float, beta: float
) -> float:
    """Mean over anchors; ``neg_rows[i]`` holds the similarities of anchor i's real negatives."""
    losses = []
    for p, negs in zip(pos, neg_rows, strict=True):
        n = len(negs)
        e_pos = math.exp(p / t)
        e_neg = np.exp(negs / t)
        if estimator == "infonce":
            ng = e_neg.sum()
        else:
            if estimator == "hcl":
                imp = np.exp(beta * negs / t)
                total = (imp * e_neg).sum() / imp.mean()
            else:
                total = e_neg.sum()
            ng = max((total - tau_plus * n * e_pos) / (1 - tau_plus), n * math.exp(-1 / t))
        losses.append(-math.log(e_pos / (e_pos + ng)))
    return float(np.mean(losses))


def reference_nt_xent(
    z1: np.ndarray, z2: np.ndarray, t: float, estimator: str = "infonce", tau_plus: float = 0.0, beta: float = 0.0
) -> float:
    """SimCLR over 2B anchors [z1; z2]: partner (i + B) mod 2B, every other view a negative."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    b2 = z.shape[0]
    pos, negs = [], []
    for i in range(b2):
        partner = (i + b2 // 2) % b2
        pos.append(z[i] @ z[partner])
        negs.append(np.array([z[i] @ z[j] for j in range(b2) if j not in (i, partner)]))
    return reference_loss(np.array(pos), negs, t, estimator, tau_plus, beta)
