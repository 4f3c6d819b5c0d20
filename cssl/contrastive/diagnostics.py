"""Negative-sampling diagnostics: what the negatives of a step look like, from tensors the step already has.

All functions are pure torch, run under no_grad, and return scalar tensors (no host synchronisation), so a
method can log them every few steps at no extra forward cost.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def negative_stats(
    pos: Tensor, neg: Tensor, temperature: float, neg_mask: Tensor | None = None, top_k: int = 5
) -> dict[str, Tensor]:
    """Similarity statistics of one step's positives and negatives.

    Args:
        pos: (B,) cosine similarity of each anchor with its positive.
        neg: (B, M) cosine similarities with candidate negatives.
        temperature: t of the loss (for the softmax of the effective number).
        neg_mask: (B, M) True on real negatives; None: all.
        top_k: k of the hardness measure.

    Returns:
        ``neg/pos_sim_mean``; ``neg/neg_sim_mean`` and ``neg/neg_sim_std`` over all real negatives;
        ``neg/neg_sim_max``, the mean over anchors of the hardest negative's similarity;
        ``neg/hardness``, the mean over anchors of their top-k negative similarities;
        ``neg/effective_negatives``, the mean over anchors of exp(entropy of the softmax of s/t over that
        anchor's negatives): N for uniform similarities, 1 when one negative dominates.
    """
    neg = neg.float()
    mask = torch.ones_like(neg, dtype=torch.bool) if neg_mask is None else neg_mask
    count = mask.sum()
    values = torch.where(mask, neg, torch.zeros_like(neg))
    mean = values.sum() / count
    var = (torch.where(mask, neg - mean, torch.zeros_like(neg)) ** 2).sum() / count.clamp(min=2).sub(1)
    masked_low = torch.where(mask, neg, torch.full_like(neg, -math.inf))
    k = min(top_k, neg.shape[1])
    top = masked_low.topk(k, dim=1).values  # (B, k)
    top = torch.where(torch.isfinite(top), top, torch.full_like(top, math.nan))
    logits = masked_low / temperature
    log_p = torch.log_softmax(logits, dim=1)  # (B, M), -inf off the mask
    entropy = -(torch.where(mask, log_p.exp() * log_p, torch.zeros_like(log_p))).sum(1)  # (B,)
    return {
        "neg/pos_sim_mean": pos.double().mean().float(),
        "neg/neg_sim_mean": mean.float(),
        "neg/neg_sim_std": var.sqrt().float(),
        "neg/neg_sim_max": masked_low.max(1).values.mean().float(),
        "neg/hardness": top.nanmean(1).mean().float(),
        "neg/effective_negatives": entropy.exp().mean().float(),
    }


@torch.no_grad()
def floor_fraction(
    pos: Tensor,
    neg: Tensor,
    temperature: float,
    *,
    estimator: str,
    tau_plus: float,
    beta: float,
    neg_mask: Tensor | None = None,
) -> Tensor:
    """Share of anchors whose DCL/HCL negative term is clamped at the floor N*e^{-1/t} (0 for InfoNCE)."""
    from cssl.contrastive.estimators import info_nce_per_anchor

    if estimator == "infonce":
        return pos.new_zeros((), dtype=torch.float32)
    losses = info_nce_per_anchor(
        pos, neg, temperature, estimator=estimator, tau_plus=tau_plus, beta=beta, neg_mask=neg_mask
    )
    n = neg_mask.sum(1) if neg_mask is not None else torch.full_like(pos, neg.shape[1])
    pos_logit = pos.to(losses.dtype) / temperature
    at_floor = torch.logaddexp(pos_logit, torch.log(n.to(losses.dtype)) - 1.0 / temperature) - pos_logit
    return torch.isclose(losses, at_floor, rtol=1e-6, atol=0.0).float().mean()


@torch.no_grad()
def importance_weights(neg: Tensor, temperature: float, beta: float, neg_mask: Tensor | None = None) -> Tensor:
    """HCL's normalised importance weights w_ij / mean_j w_ij, w_ij = e^{beta s_ij / t}; 0 off the mask. (B, M)."""
    x = beta * neg.double() / temperature
    mask = torch.ones_like(x, dtype=torch.bool) if neg_mask is None else neg_mask
    x = torch.where(mask, x, torch.full_like(x, -math.inf))
    log_mean = torch.logsumexp(x, dim=1, keepdim=True) - torch.log(mask.sum(1, keepdim=True).double())
    return torch.where(mask, (x - log_mean).exp(), torch.zeros_like(x))


@torch.no_grad()
def importance_spread(
    neg: Tensor, temperature: float, beta: float, neg_mask: Tensor | None = None
) -> dict[str, Tensor]:
    """``neg/hcl_weight_max`` (mean over anchors of the largest normalised weight) and ``neg/hcl_weight_std``."""
    w = importance_weights(neg, temperature, beta, neg_mask)
    mask = torch.ones_like(w, dtype=torch.bool) if neg_mask is None else neg_mask
    n = mask.sum(1).double()
    std = (torch.where(mask, (w - 1.0) ** 2, torch.zeros_like(w)).sum(1) / n.clamp(min=2).sub(1)).sqrt()
    return {"neg/hcl_weight_max": w.max(1).values.mean().float(), "neg/hcl_weight_std": std.mean().float()}


@torch.no_grad()
def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> Tensor:
    """Wang and Isola (2020): E ||f(x) - f(y)||^alpha over positive pairs of unit vectors (lower is better)."""
    z1, z2 = F.normalize(z1.double(), dim=1), F.normalize(z2.double(), dim=1)
    return (z1 - z2).norm(dim=1).pow(alpha).mean().float()


@torch.no_grad()
def uniformity(z: Tensor, t: float = 2.0) -> Tensor:
    """Wang and Isola (2020): log E exp(-t ||f(x) - f(y)||^2) over distinct pairs (lower is more uniform)."""
    z = F.normalize(z.double(), dim=1)
    sq = torch.pdist(z).pow(2)
    return (torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel())).float()


@torch.no_grad()
def false_negative_rate(feats: Tensor, labels: Tensor, k: int = 10) -> Tensor:
    """Share of each anchor's k hardest in-set negatives (most similar other samples) of the anchor's class.

    The negatives a contrastive loss pushes away hardest are often the same class: this measures how often,
    on a labelled split. Chance level is about the class frequency.
    """
    z = F.normalize(feats.double(), dim=1)
    sim = z @ z.T  # (N, N)
    sim.fill_diagonal_(-math.inf)
    k = min(k, z.shape[0] - 1)
    idx = sim.topk(k, dim=1).indices  # (N, k)
    return (labels[idx] == labels[:, None]).double().mean().float()


@torch.no_grad()
def step_diagnostics(
    pos: Tensor,
    neg: Tensor,
    neg_mask: Tensor | None,
    *,
    temperature: float,
    estimator: str,
    tau_plus: float,
    beta: float,
    top_k: int = 5,
) -> dict[str, Tensor]:
    """Everything a training step logs about its negatives: :func:`negative_stats`, ``neg/alignment``
    (from the positives: ||a - b||^2 = 2 - 2 cos for unit vectors), and for DCL/HCL ``neg/floor_fraction``
    and (HCL) the importance-weight spread."""
    logs = negative_stats(pos, neg, temperature, neg_mask, top_k)
    logs["neg/alignment"] = (2 - 2 * pos.double()).mean().float()
    if estimator != "infonce":
        logs["neg/floor_fraction"] = floor_fraction(
            pos, neg, temperature, estimator=estimator, tau_plus=tau_plus, beta=beta, neg_mask=neg_mask
        )
    if estimator == "hcl":
        logs.update(importance_spread(neg, temperature, beta, neg_mask))
    return logs
