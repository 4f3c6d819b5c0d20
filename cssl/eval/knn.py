"""Weighted k-nearest-neighbour classification on cosine similarity (Wu et al. 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_predict(
    query: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    *,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> Tensor:
    """Class scores of each query from its k most similar bank entries, weighted by exp(sim / t).

    Args:
        query: (Q, F) features; bank: (N, F) features (both normalised here); bank_labels: (N,).
        num_classes: C.

    Returns:
        (Q, C) scores; argmax is the prediction.
    """
    query = F.normalize(query.float(), dim=1)
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, query.shape[0], chunk):
        sim = query[start : start + chunk] @ bank.T  # (q, N)
        top_sim, top_idx = sim.topk(k, dim=1)  # (q, k)
        weights = (top_sim / temperature).exp()  # (q, k)
        votes = F.one_hot(bank_labels[top_idx], num_classes).float()  # (q, k, C)
        out.append((votes * weights.unsqueeze(-1)).sum(1))  # (q, C)
    return torch.cat(out)
