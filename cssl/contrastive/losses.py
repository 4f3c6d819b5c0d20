"""In-batch pool (SimCLR's NT-Xent): local anchors against the views of the global batch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from cssl.contrastive.estimators import at_least_fp32, check_estimator, loss_from_log_sums
from cssl.core import distributed

# Largest |shift| for which e^{x - shift} of a unit-vector logit x in [-scale, scale] stays a normal number
# (fp32: e^-80 ~ 1.8e-35); above it the shift is each row's max over its negatives (one more pass).
_FIXED_SHIFT_SPAN = {torch.float32: 80.0, torch.float64: 700.0}


def in_batch_similarities(z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Similarities of the 2B local anchors with the 2B_g gathered views, with positive and mask.

    Candidates are ordered [view 1 of ranks 0..P-1, view 2 of ranks 0..P-1], gathered with gradient. Local
    anchor i of view 1 sits at column r*B + i (r = global rank) and its positive at B_g + r*B + i; view 2
    mirrors that. Self and positive columns are masked out of the negatives.

    Returns:
        pos (2B,), sim (2B, 2B_g) and neg_mask (2B, 2B_g), True on the 2B_g - 2 negatives of each row.
    """
    with torch.autocast(device_type=z1.device.type, enabled=False):
        anchors, candidates, self_col, pos_col = _global_views(z1, z2)
        sim = anchors @ candidates.T  # (2B, 2Bg)
        rows = torch.arange(anchors.shape[0], device=anchors.device)
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

    The same loss as :func:`info_nce` over :func:`in_batch_similarities`, computed without materialising
    the similarity matrix, its mask or masked copies: the (2B, 2B_g) exponentials are made in place in the
    matmul's output, reduced per row, and that one buffer is all autograd keeps (two with HCL's beta > 0).

    Args:
        z1, z2: (B, D) projections of the two views; L2-normalised here in fp32.
        temperature: t > 0.
        estimator, tau_plus, beta: see :func:`cssl.contrastive.info_nce`.

    Returns:
        Scalar fp32 loss.
    """
    check_estimator(estimator, temperature, tau_plus, beta)
    with torch.autocast(device_type=z1.device.type, enabled=False):
        anchors, candidates, self_col, pos_col = _global_views(z1, z2)
        b_global = candidates.shape[0] // 2
        pos_logit = (anchors * candidates[pos_col]).sum(1) / temperature  # (2B,)
        hard = estimator == "hcl" and beta != 0
        scales = ((1.0 + beta) / temperature, beta / temperature) if hard else (1.0 / temperature,)
        log_sums = _MaskedLogSumExp.apply(anchors, candidates, scales, self_col, pos_col)  # (2B, 1 or 2)
        log_n = None if estimator == "infonce" else pos_logit.new_full(pos_logit.shape, _log(2 * b_global - 2))
        log_beta_sum = log_sums[:, 1] if hard else None
        losses = loss_from_log_sums(pos_logit, log_sums[:, 0], log_beta_sum, log_n, temperature, estimator, tau_plus)
    return losses.mean()


def _global_views(z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normalised local anchors and gathered candidates, with each anchor's self and positive columns.

    Returns:
        anchors (2B, D) = [z1; z2] of this rank, candidates (2B_g, D) = [z1 of ranks 0..P-1; z2 of ranks
        0..P-1] gathered with gradient, self_col (2B,) and pos_col (2B,): local anchor i of view 1 sits at
        column r*B + i (r = global rank) and its positive at B_g + r*B + i; view 2 mirrors that.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (B, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    b = z1.shape[0]
    z1 = F.normalize(at_least_fp32(z1), dim=1)  # (B, D)
    z2 = F.normalize(at_least_fp32(z2), dim=1)  # (B, D)
    anchors = torch.cat([z1, z2])  # (2B, D)
    candidates = torch.cat([distributed.gather_with_grad(z1), distributed.gather_with_grad(z2)])  # (2Bg, D)
    b_global = candidates.shape[0] // 2
    local = torch.arange(b, device=z1.device) + distributed.rank() * b  # (B,) global row index
    self_col = torch.cat([local, local + b_global])  # (2B,)
    pos_col = torch.cat([local + b_global, local])  # (2B,)
    return anchors, candidates, self_col, pos_col


def _log(n: int) -> float:
    return math.log(n) if n > 0 else float("-inf")


class _MaskedLogSumExp(torch.autograd.Function):
    """log sum_j e^{scale * a_i.c_j} over the columns j other than ``self_col[i]`` and ``pos_col[i]``.

    a (R, D) and c (C, D) are unit rows, so a_i.c_j <= 1 and, for moderate scales, the constant ``scale``
    is a safe shift: the exponentials are made in place in the matmul's output with no row-max pass. The
    exponentials are saved for backward, where d/dS = g * scale * e / rowsum, then the two gradient matmuls.
    """

    @staticmethod
    def forward(ctx, a: Tensor, c: Tensor, scales: tuple[float, ...], self_col: Tensor, pos_col: Tensor) -> Tensor:
        masked = torch.stack([self_col, pos_col], dim=1)  # (R, 2)
        span = _FIXED_SHIFT_SPAN.get(a.dtype, 0.0)
        if len(scales) == 1:
            x = torch.mm(a * scales[0], c.T)  # (R, C) scaled logits
            xs = [x]
        else:
            x = torch.mm(a, c.T)  # (R, C)
            xs = [x * s for s in scales[:-1]] + [x.mul_(scales[-1])]  # (R, C) each, the last one in place
        exps, sums, log_sums = [], [], []
        for s, e in zip(scales, xs, strict=True):
            e.scatter_(1, masked, float("-inf"))  # (scatter: much cheaper than index_put on CPU)
            if 2 * s <= span:
                shift = e.new_full((e.shape[0], 1), s)  # (R, 1)
            else:  # the row max over the negatives; empty rows get 0
                shift = e.amax(1, keepdim=True)  # (R, 1)
                shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
            e.sub_(shift).exp_()  # (R, C), masked columns are 0
            total = e.sum(1)  # (R,)
            exps.append(e)
            sums.append(total)
            log_sums.append(total.log() + shift[:, 0])
        ctx.scales = scales
        ctx.save_for_backward(a, c, *exps, *sums)
        return torch.stack(log_sums, dim=1)  # (R, K)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        a, c, *rest = ctx.saved_tensors
        k = len(ctx.scales)
        exps, sums = rest[:k], rest[k:]
        tiny = torch.finfo(a.dtype).tiny
        d_sim = None  # (R, C): dL/d(a_i.c_j)
        for s, e, total, g in zip(ctx.scales, exps, sums, grad.unbind(1), strict=True):
            coef = (g * s / total.clamp_min(tiny))[:, None]  # (R, 1)
            d_sim = e * coef if d_sim is None else d_sim.addcmul_(e, coef)
        grad_a = torch.mm(d_sim, c) if ctx.needs_input_grad[0] else None  # (R, D)
        grad_c = torch.mm(d_sim.T, a) if ctx.needs_input_grad[1] else None  # (C, D)
        return grad_a, grad_c, None, None, None
