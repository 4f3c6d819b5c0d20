"""Adversarial pool (AdCo, Hu et al. 2021): a bank of K negatives learned by gradient *ascent*.

The bank W (D, K) is unnormalised; every use normalises its columns, d = W / |W|. Each query is scored
against the keys gathered from all ranks and the bank, ``[q.k_all | q.d]``; its positive is its own key at
column ``global_rank * B + i``. The network *descends* the cross-entropy of these logits at ``moco_t``; the bank
*ascends* the same cross-entropy at its own temperature ``mem_t`` (from the same pre-step q and W):

    g = -dL_mem/dW (averaged over ranks);  v <- momentum * v + g + wd * W;  W <- W - lr * v

The bank is a buffer (saved in checkpoints with v), outside the main optimiser, and identical on every rank:
every rank applies the same all-reduced gradient to the same W.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from cssl.contrastive.estimators import at_least_fp32
from cssl.core import distributed
from cssl.core.errors import ConfigError, check, check_positive, check_unit_interval, is_int, is_number

BANK_INITS = ("keys", "random", "official")


def adversarial_similarities(
    q: Tensor, keys: Tensor, directions: Tensor, pos_offset: int, valid: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Similarities of local queries with the gathered keys and the bank, with positive and negative mask.

    Args:
        q: (B, D) L2-normalised queries of this rank.
        keys: (B_g, D) L2-normalised keys of all ranks, in rank order (no gradient).
        directions: (D, K) the bank's normalised columns.
        pos_offset: column of query 0's positive: ``global_rank * B``.
        valid: (K,) bool, False on bank columns not yet filled (excluded from the negatives); None: all valid.

    Returns:
        pos (B,), sim (B, B_g + K) = ``[q.k_all | q.d]`` and neg_mask (B, B_g + K), False on the positive
        column and on invalid bank columns.
    """
    b, b_global = q.shape[0], keys.shape[0]
    rows = torch.arange(b, device=q.device)
    pos_col = rows + pos_offset  # (B,)
    sim = torch.cat([q @ keys.T, q @ directions], dim=1)  # (B, B_g + K)
    neg_mask = torch.ones(sim.shape, dtype=torch.bool, device=q.device)  # (B, B_g + K)
    neg_mask[rows, pos_col] = False
    if valid is not None:
        neg_mask[:, b_global:] &= valid[None, :]
    return sim[rows, pos_col], sim, neg_mask


def bank_loss_and_gradient(
    q: Tensor,
    keys: Tensor,
    weight: Tensor,
    temperature: float,
    pos_offset: int,
    valid: Tensor | None = None,
    neg_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """L_mem, the mean cross-entropy of ``[q.k_all | q.d] / temperature`` (label: the own key), and dL_mem/dW.

    Closed form (no autograd), in fp32 or fp64 as the inputs: with p the softmax of a row and s_ij = q_i.d_j,

        dL/dW_j = sum_i p_ij (q_i - s_ij d_j) / (B * temperature * |W_j|)

    Args:
        q: (B, D) normalised queries (detached). keys: (B_g, D) normalised gathered keys.
        weight: (D, K) the unnormalised bank. temperature: mem_t.
        pos_offset, valid: as :func:`adversarial_similarities`.
        neg_mask: (B, B_g + K) bool, the network loss's negatives after a selection transform (FNC
            elimination, ring): other columns leave the partition, so they get no ascent this step.

    Returns:
        L_mem (scalar) and dL_mem/dW (D, K); columns that are not valid get a zero gradient.
    """
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, keys = at_least_fp32(q.detach()), at_least_fp32(keys.detach())
        weight = weight.to(q.dtype)
        norms = weight.norm(dim=0).clamp_min(1e-12)  # (K,)
        directions = weight / norms  # (D, K)
        pos, sim, _ = adversarial_similarities(q, keys, directions, pos_offset, valid)
        logits = sim / temperature  # (B, B_g + K)
        if valid is not None:
            logits[:, keys.shape[0] :] = logits[:, keys.shape[0] :].masked_fill(~valid[None, :], float("-inf"))
        if neg_mask is not None:
            rows = torch.arange(q.shape[0], device=q.device)
            keep = neg_mask.clone()  # (B, B_g + K): the negatives kept, and each row's positive
            keep[rows, rows + pos_offset] = True
            logits = logits.masked_fill(~keep, float("-inf"))
        log_z = torch.logsumexp(logits, dim=1)  # (B,)
        loss = (log_z - pos / temperature).mean()
        b = q.shape[0]
        s = sim[:, keys.shape[0] :]  # (B, K)
        a = torch.exp(logits[:, keys.shape[0] :] - log_z[:, None]) / (b * temperature)  # (B, K): dL/ds
        grad = (q.T @ a - directions * (a * s).sum(0)[None, :]) / norms  # (D, K)
    return loss, grad


class AdversarialBank(nn.Module):
    """K learnable negatives updated by momentum SGD *ascent* on the contrastive loss (AdCo).

    Usage per training step: :meth:`similarities` for the network loss; :meth:`accumulate` with the same
    (detached) queries and keys, once per query crop; then, after the network's optimiser step, :meth:`step`.
    With gradient accumulation, call :meth:`accumulate` on every micro-batch and :meth:`step` once per
    optimiser step. With ``init="keys"`` the columns start empty and are filled, in order, by the keys
    passed to :meth:`offer_keys` (applied in :meth:`step`); empty columns are not negatives meanwhile.

    Args:
        dim: D, the dimension of the keys.
        size: K, the number of negatives.
        temperature: mem_t of the bank's loss (> 0).
        lr: memory_lr, the step size of the ascent (>= 0).
        momentum: momentum of the ascent, in [0, 1).
        weight_decay: wd added to the velocity (>= 0).
        init: ``keys`` (filled from the first gathered keys), ``random`` (unit columns), or ``official``: AdCo's
            own start, W ~ N(0, 1) (AdCo model/AdCo.py:173), every column a negative, until the method's
            ``init_memory`` pass writes keys into it (:meth:`write`) and marks it ``initialised``.
    """

    def __init__(
        self,
        dim: int,
        size: int,
        *,
        temperature: float = 0.02,
        lr: float = 3.0,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        init: str = "keys",
    ) -> None:
        super().__init__()
        check(
            is_int(size) and size >= 1,
            f"method.bank_size must be an integer >= 1, got {size!r}",
        )
        check_positive("method.mem_t", temperature)
        check(is_number(lr) and lr >= 0, f"method.mem_lr must be >= 0, got {lr!r}")
        check_unit_interval("method.mem_momentum", momentum)
        check(is_number(weight_decay) and weight_decay >= 0, f"method.mem_wd must be >= 0, got {weight_decay!r}")
        if init not in BANK_INITS:
            raise ConfigError(f"method.bank_init must be one of {', '.join(BANK_INITS)}, got {init!r}")
        self.temperature, self.lr, self.momentum, self.weight_decay = temperature, lr, momentum, weight_decay
        self.init = init
        if init == "random":
            weight = F.normalize(torch.randn(dim, size), dim=0)
            filled = size
        elif init == "official":
            weight, filled = torch.randn(dim, size), size
            # saved with the bank: a resumed run does not initialise again (AdCo main_worker.py:186)
            self.register_buffer("initialised", torch.tensor(False))
        else:
            weight, filled = torch.zeros(dim, size), 0
        self.register_buffer("weight", weight)  # (D, K) unnormalised
        self.register_buffer("velocity", torch.zeros(dim, size))  # (D, K)
        self.register_buffer("filled", torch.tensor(filled, dtype=torch.long))  # columns holding a negative
        self._filled: int | None = filled  # host copy of `filled` (no device sync per step); None: re-read once
        self._grad: Tensor | None = None  # dL_mem/dW summed since the last step (this rank only)
        self._offered: list[Tensor] = []
        self.drift: Tensor | None = None  # |lr v| / |W| of the last step (a diagnostic)

    @property
    def size(self) -> int:
        return self.weight.shape[1]

    @property
    def filled_count(self) -> int:
        """Columns holding a negative, from the host copy (read from the buffer once after a load)."""
        if self._filled is None:
            self._filled = int(self.filled)
        return self._filled

    def is_full(self) -> bool:
        return self.filled_count >= self.size

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._filled = None  # the buffer changed: re-read it on next use

    def valid(self) -> Tensor | None:
        """(K,) bool mask of filled columns, or None when all are filled."""
        if self.is_full():
            return None
        return torch.arange(self.size, device=self.weight.device) < self.filled

    def directions(self) -> Tensor:
        """d = W / |W| per column, (D, K), fp32, no gradient."""
        return F.normalize(self.weight.float(), dim=0)

    def similarities(self, q: Tensor, keys: Tensor, pos_offset: int) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`adversarial_similarities` of ``q`` (gradient flows into q) against the keys and this bank."""
        with torch.autocast(device_type=q.device.type, enabled=False):
            q = at_least_fp32(q)
            return adversarial_similarities(
                q, keys.to(q.dtype), self.directions().to(q.dtype), pos_offset, self.valid()
            )

    @torch.no_grad()
    def accumulate(
        self, q: Tensor, keys: Tensor, pos_offset: int, weight: float = 1.0, neg_mask: Tensor | None = None
    ) -> Tensor:
        """Add ``weight * dL_mem/dW`` of these (detached) queries to the pending gradient; returns L_mem.

        ``neg_mask`` (B, B_g + K): the negatives the network's loss kept (see :func:`bank_loss_and_gradient`).
        """
        loss, grad = bank_loss_and_gradient(q, keys, self.weight, self.temperature, pos_offset, self.valid(), neg_mask)
        grad = grad.to(self.weight.dtype) * weight
        self._grad = grad if self._grad is None else self._grad + grad
        return loss.detach()

    @torch.no_grad()
    def offer_keys(self, keys: Tensor) -> None:
        """Keys (B_g, D) that may fill empty columns at the next :meth:`step` (ignored once the bank is full)."""
        if not self.is_full():
            self._offered.append(keys.detach().to(self.weight.dtype))

    @torch.no_grad()
    def step(self) -> None:
        """One ascent step with the pending gradient averaged over ranks, then fill empty columns.

        A collective call under DDP: every rank must call it at the same point.
        """
        if self._grad is not None:
            g = -distributed.all_reduce_mean(self._grad)  # ascent: minus the loss gradient
            self.velocity.mul_(self.momentum).add_(g).add_(self.weight, alpha=self.weight_decay)
            update = self.lr * self.velocity
            self.drift = update.norm() / self.weight.norm().clamp_min(1e-12)  # relative change of W this step
            self.weight.sub_(update)
            self._grad = None
        if self._offered:
            keys = torch.cat(self._offered)  # (M, D), identical on every rank (gathered)
            self._offered = []
            start = self.filled_count
            n = min(self.size - start, keys.shape[0])
            if n > 0:
                self.weight[:, start : start + n] = keys[:n].T
                self.velocity[:, start : start + n] = 0
                self.filled.fill_(start + n)
                self._filled = start + n

    def needs_initialisation(self) -> bool:
        """Whether the ``official`` initialisation pass has yet to run (a host read, once per fit)."""
        return self.init == "official" and not bool(self.initialised)

    @torch.no_grad()
    def write(self, keys: Tensor, start: int) -> int:
        """Write keys (M, D) into columns ``start``, ``start + 1``, ... (as many as fit); returns the next free
        column. The ``official`` initialisation's fill (AdCo training/train.py:296-300)."""
        n = max(0, min(self.size - start, keys.shape[0]))
        self.weight[:, start : start + n] = keys[:n].T.to(self.weight.dtype)
        self.velocity[:, start : start + n] = 0
        return start + n

    def extra_repr(self) -> str:
        return (
            f"dim={self.weight.shape[0]}, size={self.size}, temperature={self.temperature}, lr={self.lr}, "
            f"momentum={self.momentum}, weight_decay={self.weight_decay}"
        )
