"""Estimators: turn (positive, negatives) similarities into an InfoNCE-style loss.

All three share one frame (METHODS.md)::

    loss_i = -log( e^{s(i,+)/t} / (e^{s(i,+)/t} + Ng_i) )

and differ in Ng_i, the estimate of the negative term:

- ``infonce``: Ng_i = sum_j e^{s(i,j)/t}.
- ``dcl`` (Chuang et al. 2020): Ng_i = max((sum_j e^{s_ij/t} - tau_plus*N*e^{s_i+/t}) / (1-tau_plus), N*e^{-1/t}).
- ``hcl`` (Robinson et al. 2021): as DCL with the sum importance-weighted by imp_ij = e^{beta*s_ij/t},
  normalised by its mean over the anchor's negatives (not detached, as in the official code).

Everything is computed in fp32 and in log space (logsumexp first, then the subtraction), so a small
temperature with thousands of hard negatives neither overflows nor loses the debiasing term.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cssl.core.errors import ConfigError, check_positive, check_unit_interval

ESTIMATORS = ("infonce", "dcl", "hcl")


def check_estimator(estimator: str, temperature: float, tau_plus: float, beta: float) -> None:
    """Validate estimator hyper-parameters; raises :class:`ConfigError` naming the bad key."""
    if estimator not in ESTIMATORS:
        raise ConfigError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    check_positive("temperature", temperature)
    check_unit_interval("tau_plus", tau_plus)
    if not (isinstance(beta, int | float) and beta >= 0):
        raise ConfigError(f"beta must be >= 0, got {beta!r}")


def info_nce(
    pos: Tensor,
    neg: Tensor,
    temperature: float,
    *,
    estimator: str = "infonce",
    tau_plus: float = 0.0,
    beta: float = 0.0,
    neg_mask: Tensor | None = None,
    extra_pos: Tensor | None = None,
) -> Tensor:
    """InfoNCE-style loss from cosine similarities, mean over anchors.

    Args:
        pos: (B,) similarity of each anchor with its positive.
        neg: (B, M) similarities with candidate negatives.
        temperature: t > 0.
        estimator: ``"infonce"``, ``"dcl"`` or ``"hcl"``.
        tau_plus: class prior of false negatives, in [0, 1) (DCL/HCL).
        beta: hardness concentration, >= 0 (HCL).
        neg_mask: (B, M) bool, True where ``neg`` holds a real negative; N of a row is its count.
            None means every entry is a negative.
        extra_pos: (B, M) bool, columns that act as additional positives (false-negative attraction,
            NEGATIVES.md 1.4): they are never negatives, they join the partition, and the positive and
            they are averaged in log space with weight 1/(1+|F_a|) each. None: no extra positives.

    An anchor with no negative left (all masked, e.g. by false-negative elimination or an empty ring) has
    a negative term of exactly 0 with every estimator: its loss is 0 (or, with extra positives, the
    attraction term alone) with a zero gradient. Such rows count in the mean as 0, as the official ring
    code does (NEGATIVES.md 1.3, 2.1): the loss keeps its scale whatever share of rows is empty.

    Returns:
        Scalar fp32 loss, the mean over the B anchors.

    Example:
        >>> pos = torch.tensor([1.0]); neg = torch.tensor([[1.0]])
        >>> round(info_nce(pos, neg, 1.0).item(), 6)  # log 2
        0.693147
    """
    return info_nce_per_anchor(
        pos, neg, temperature, estimator=estimator, tau_plus=tau_plus, beta=beta, neg_mask=neg_mask, extra_pos=extra_pos
    ).mean()


def info_nce_per_anchor(
    pos: Tensor,
    neg: Tensor,
    temperature: float,
    *,
    estimator: str = "infonce",
    tau_plus: float = 0.0,
    beta: float = 0.0,
    neg_mask: Tensor | None = None,
    extra_pos: Tensor | None = None,
) -> Tensor:
    """As :func:`info_nce`, without the mean: (B,) losses."""
    check_estimator(estimator, temperature, tau_plus, beta)
    if pos.dim() != 1 or neg.dim() != 2 or neg.shape[0] != pos.shape[0]:
        raise ValueError(f"expected pos (B,) and neg (B, M), got {tuple(pos.shape)} and {tuple(neg.shape)}")
    for name, m in (("neg_mask", neg_mask), ("extra_pos", extra_pos)):
        if m is not None and m.shape != neg.shape:
            raise ValueError(f"{name} {tuple(m.shape)} must match neg {tuple(neg.shape)}")
    if neg.shape[1] == 0:  # no column at all: one masked stand-in column, so the rows below are empty rows
        neg = neg.new_zeros(neg.shape[0], 1)
        neg_mask = torch.zeros_like(neg, dtype=torch.bool)  # (B, 1)
        extra_pos = None if extra_pos is None else neg_mask.clone()
    if extra_pos is not None:
        neg_mask = ~extra_pos if neg_mask is None else neg_mask & ~extra_pos  # (B, M)
    with torch.autocast(device_type=pos.device.type, enabled=False):
        pos_logit = at_least_fp32(pos) / temperature  # (B,)
        raw_logit = neg_logit = at_least_fp32(neg) / temperature  # (B, M)
        empty = None
        if neg_mask is not None:
            # rows with no negative left are computed on a constant stand-in (logits 0 on every column), so
            # that every estimator's arithmetic and gradient stay finite; their term is set to 0 below
            empty = ~neg_mask.any(1)  # (B,)
            fill = torch.where(empty, 0.0, float("-inf")).to(neg_logit.dtype)[:, None]  # (B, 1)
            neg_logit = torch.where(neg_mask, neg_logit, fill)  # one pass, no negated copy of the mask
        if estimator == "hcl" and beta != 0:
            log_sum = torch.logsumexp((1.0 + beta) * neg_logit, dim=1)  # (B,)
            log_beta_sum = torch.logsumexp(beta * neg_logit, dim=1)  # (B,)
        else:
            log_sum, log_beta_sum = torch.logsumexp(neg_logit, dim=1), None  # (B,) log sum_j neg_ij
        if estimator == "infonce":
            log_n = None
        elif neg_mask is not None:
            count = torch.where(empty, neg.shape[1], neg_mask.sum(1))  # (B,) the stand-in counts M
            log_n = torch.log(count.to(pos_logit.dtype))  # (B,)
        else:
            log_n = torch.full_like(pos_logit, math.log(neg.shape[1]) if neg.shape[1] else float("-inf"))
        log_ng = log_negative_term(pos_logit, log_sum, log_beta_sum, log_n, temperature, estimator, tau_plus)
        if empty is not None:
            log_ng = torch.where(empty, float("-inf"), log_ng)  # (B,) Ng = 0 exactly, zero gradient
        if extra_pos is None:
            return torch.logaddexp(pos_logit, log_ng) - pos_logit  # (B,)
        return _attraction(pos_logit, raw_logit, log_ng, extra_pos)


def _attraction(pos_logit: Tensor, logit: Tensor, log_ng: Tensor, extra_pos: Tensor) -> Tensor:
    """log Z_a - (s+_a/t + sum_F s_af/t) / (1 + |F_a|), Z_a = e^{s+/t} + sum_F e^{s_af/t} + Ng_a (NEGATIVES.md 1.4)."""
    log_extra = torch.logsumexp(torch.where(extra_pos, logit, float("-inf")), dim=1)  # (B,), -inf if F_a empty
    log_z = torch.logsumexp(torch.stack([pos_logit, log_ng, log_extra]), dim=0)  # (B,)
    extra_sum = torch.where(extra_pos, logit, 0.0).sum(1)  # (B,)
    return log_z - (pos_logit + extra_sum) / (1 + extra_pos.sum(1)).to(pos_logit.dtype)  # (B,)


def loss_from_log_sums(
    pos_logit: Tensor,
    log_sum: Tensor,
    log_beta_sum: Tensor | None,
    log_n: Tensor | None,
    temperature: float,
    estimator: str,
    tau_plus: float,
) -> Tensor:
    """Per-anchor losses from the row reductions of the negatives' logits x_ij = s_ij / t (all (B,), fp32+).

    Args:
        pos_logit: s_i+ / t.
        log_sum: log sum_j e^{x_ij} (HCL with beta > 0: log sum_j e^{(1+beta) x_ij}).
        log_beta_sum: HCL with beta > 0: log sum_j e^{beta x_ij}; else None.
        log_n: log N_i (None for ``infonce``, which does not use it).
        temperature, estimator, tau_plus: as :func:`info_nce`.
    """
    log_ng = log_negative_term(pos_logit, log_sum, log_beta_sum, log_n, temperature, estimator, tau_plus)
    # -log(e^p / (e^p + Ng)) = logaddexp(p, log Ng) - p
    return torch.logaddexp(pos_logit, log_ng) - pos_logit  # (B,)


def log_negative_term(
    pos_logit: Tensor,
    log_sum: Tensor,
    log_beta_sum: Tensor | None,
    log_n: Tensor | None,
    temperature: float,
    estimator: str,
    tau_plus: float,
) -> Tensor:
    """log Ng_i, the estimator's negative term, from the same row reductions as :func:`loss_from_log_sums`."""
    if estimator == "infonce":
        log_ng = log_sum
    else:
        if log_beta_sum is not None:
            # log( sum_j imp_ij neg_ij / mean_j imp_ij ), imp_ij = e^{beta s_ij / t}
            log_sum = log_sum - (log_beta_sum - log_n)
        log_ng = _debias(log_sum, pos_logit, log_n, temperature, tau_plus)
    return log_ng  # (B,)


def _debias(log_sum: Tensor, pos_logit: Tensor, log_n: Tensor, temperature: float, tau_plus: float) -> Tensor:
    """log max((S - tau_plus*N*e^p) / (1 - tau_plus), N*e^{-1/t}), all inputs in log space."""
    log_floor = log_n - 1.0 / temperature  # (B,)
    if tau_plus == 0:
        return torch.maximum(log_sum, log_floor)
    log_fn = math.log(tau_plus) + log_n + pos_logit  # log of the false-negative mass, (B,)
    diff = log_fn - log_sum  # < 0 when the subtraction stays positive
    valid = diff < 0
    safe = torch.where(valid, diff, torch.full_like(diff, -1.0))  # keeps the unused branch's gradient finite
    log_debiased = log_sum + torch.log1p(-torch.exp(safe)) - math.log1p(-tau_plus)
    log_debiased = torch.where(valid, log_debiased, torch.full_like(log_debiased, float("-inf")))
    return torch.maximum(log_debiased, log_floor)


def annealed_beta(beta: float, epoch: int, max_epochs: int, steps: int = 9) -> float:
    """HCL's beta annealing as the official code does it (joshr17/HCL image/main.py:151-154, 176-181).

    The official loop draws ``np.linspace(beta, 0, 9)`` one value at a time after every ``int(E / 9)``-th
    epoch, the first draw being beta itself: over E = 400 epochs (period 44) epochs 1-88 train with beta,
    then 7/8, 6/8, ..., 1/8 of it for 44 epochs each, and 0 for epochs 397-400. Where the official loop
    fails (E < 9: a modulo by zero; a tenth draw when 10 * int(E / 9) <= E: StopIteration), the period is at
    least 1 epoch and beta stays 0 after the last draw.

    Args:
        beta: starting value.
        epoch: the current epoch, counted from 0.
        max_epochs: E, the epochs of the run.
        steps: values of the linspace (9), >= 2.

    Example:
        >>> [annealed_beta(1.0, e, 400) for e in (0, 87, 88, 131, 132, 395, 396, 399)]
        [1.0, 1.0, 0.875, 0.875, 0.75, 0.125, 0.0, 0.0]
    """
    period = max(1, max_epochs // steps)
    draws = min(steps, epoch // period)  # values drawn before this epoch (after epochs period, 2*period, ...)
    return beta if draws == 0 else beta * (1 - (draws - 1) / (steps - 1))


def at_least_fp32(x: Tensor) -> Tensor:
    """fp16/bf16 -> fp32; fp32 and fp64 unchanged (fp64 keeps gradient checks exact)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()
