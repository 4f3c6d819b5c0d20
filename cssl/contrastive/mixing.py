"""Hard negative mixing (MoChi, Kalantidis et al. 2020): synthetic negatives made per query from its
hardest negatives, whose similarities are appended to that query's row of logits.

For each query q (unit) and its N hardest negatives n_(0) ... n_(N-1) (sorted by q.n, hardest first):

- s mixes   h  = normalize(alpha * n_i + (1 - alpha) * n_j),  i, j drawn from the N with replacement,
  alpha ~ U(0, 1);
- s' mixes  h' = normalize(beta * q + (1 - beta) * n_j),      beta ~ U(0, 0.5), q detached.

What is guaranteed about hardness: h' lies on the shorter arc between n_j and q, so q.h' >= q.n_j >= q.n_(N-1)
always. For h, q.h >= min(q.n_i, q.n_j) holds when alpha q.n_i + (1 - alpha) q.n_j >= 0 (normalising then only
scales the similarity up); with negative similarities a mix of two nearly opposite negatives can be much
easier than either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cssl.contrastive.estimators import at_least_fp32


@torch.no_grad()
def mochi_negatives(
    q: Tensor,
    negatives: Tensor,
    *,
    n_hard: int,
    s: int,
    s_prime: int,
    generator: torch.Generator | None = None,
    sim: Tensor | None = None,
) -> Tensor:
    """Synthetic hard negatives of each query, without gradient.

    Args:
        q: (B, D) queries (normalised here; detached).
        negatives: (K, D) unit negatives, e.g. the MoCo queue.
        n_hard: N, the number of hardest negatives of each query to mix, 1 <= N <= K.
        s: mixes of two hard negatives per query (>= 0).
        s_prime: mixes of the query with one hard negative per query (>= 0).
        generator: random source of the draws (default: the global generator).
        sim: (B, K) similarities q.negatives if the caller has them already (the loss's logits), so that the
            ranking does not repeat the product.

    Returns:
        (B, s + s_prime, D) unit vectors: the s mixes of negatives, then the s_prime mixes with the query.
    """
    _check_args(q, negatives, n_hard, s, s_prime)
    q = F.normalize(at_least_fp32(q.detach()), dim=1)  # (B, D)
    negatives = negatives.detach().to(q.dtype)  # (K, D)
    b, device = q.shape[0], q.device
    hard = hardest_indices(q, negatives, n_hard, sim)  # (B, N)

    def ranks(count: int) -> Tensor:
        return torch.randint(n_hard, (b, count), generator=generator, device=device)

    def uniform(count: int) -> Tensor:
        return torch.rand(b, count, generator=generator, device=device)

    pair_i, pair_j, alpha = ranks(s), ranks(s), uniform(s)  # (B, s) each
    query_j, beta = ranks(s_prime), 0.5 * uniform(s_prime)  # (B, s') each
    return mix_hard_negatives(q, negatives, hard, pair_i, pair_j, alpha, query_j, beta)


def hardest_indices(q: Tensor, negatives: Tensor, n_hard: int, sim: Tensor | None = None) -> Tensor:
    """(B, N) indices into ``negatives`` of each query's N most similar rows, hardest first."""
    if sim is None:
        sim = q @ negatives.T  # (B, K)
    elif sim.shape != (q.shape[0], negatives.shape[0]):
        raise ValueError(f"sim must be (B, K) = {(q.shape[0], negatives.shape[0])}, got {tuple(sim.shape)}")
    return sim.topk(n_hard, dim=1, sorted=True).indices  # (B, N)


@torch.no_grad()
def mix_hard_negatives(
    q: Tensor,
    negatives: Tensor,
    hard: Tensor,
    pair_i: Tensor,
    pair_j: Tensor,
    alpha: Tensor,
    query_j: Tensor,
    beta: Tensor,
) -> Tensor:
    """The mixing of :func:`mochi_negatives` with explicit draws (for exact tests).

    Ranks index each query's own hardest list (0 = hardest), so query b only ever mixes its own negatives.

    Args:
        q: (B, D) unit queries.
        negatives: (K, D) unit negatives.
        hard: (B, N) indices into ``negatives``, hardest first (:func:`hardest_indices`).
        pair_i, pair_j: (B, s) ranks of the two negatives of each mix; alpha: (B, s) weights of ``pair_i``.
        query_j: (B, s') ranks of the negative mixed with q; beta: (B, s') weights of q.

    Returns:
        (B, s + s', D) unit vectors.
    """
    q = q.detach()
    n_i = negatives[hard.gather(1, pair_i)]  # (B, s, D): per-query rank -> queue row -> vector
    n_j = negatives[hard.gather(1, pair_j)]  # (B, s, D)
    a = alpha.to(q.dtype).unsqueeze(2)  # (B, s, 1)
    mixed = F.normalize(a * n_i + (1 - a) * n_j, dim=2)  # (B, s, D)
    n_q = negatives[hard.gather(1, query_j)]  # (B, s', D)
    w = beta.to(q.dtype).unsqueeze(2)  # (B, s', 1)
    harder = F.normalize(w * q.unsqueeze(1) + (1 - w) * n_q, dim=2)  # (B, s', D)
    return torch.cat([mixed, harder], dim=1)  # (B, s + s', D)


def _check_args(q: Tensor, negatives: Tensor, n_hard: int, s: int, s_prime: int) -> None:
    if q.dim() != 2 or negatives.dim() != 2 or q.shape[1] != negatives.shape[1]:
        raise ValueError(f"expected q (B, D) and negatives (K, D), got {tuple(q.shape)} and {tuple(negatives.shape)}")
    if not 1 <= n_hard <= negatives.shape[0]:
        raise ValueError(f"n_hard must be in [1, K={negatives.shape[0]}], got {n_hard}")
    if s < 0 or s_prime < 0:
        raise ValueError(f"s and s_prime must be >= 0, got {s} and {s_prime}")
