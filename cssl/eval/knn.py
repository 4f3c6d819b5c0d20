"""Weighted k-nearest-neighbour classification on cosine similarity (Wu et al. 2018)."""

from __future__ import annotations

from typing import Any

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


@torch.no_grad()
def knn_grid(
    query: Tensor,
    query_labels: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    *,
    ks: list[int],
    temperatures: list[float],
    chunk: int = 1024,
) -> dict[tuple[int, float], tuple[float, float]]:
    """Top-1 and top-5 of :func:`knn_predict` for every (k, t) at once: the similarities and the
    ``max(ks)`` nearest neighbours are found once per query chunk, and each smaller k takes the first k of
    them (``topk`` returns them sorted).

    Args:
        query: (Q, F); query_labels: (Q,); bank: (N, F); bank_labels: (N,).

    Returns:
        {(k, t): (top1, top5)} as fractions of the queries.
    """
    query = F.normalize(query.float(), dim=1)
    bank = F.normalize(bank.float(), dim=1)
    k_max = min(max(ks), bank.shape[0])
    top = min(5, num_classes)
    hits = {(k, t): torch.zeros(2, device=query.device) for k in ks for t in temperatures}
    for start in range(0, query.shape[0], chunk):
        sim = query[start : start + chunk] @ bank.T  # (q, N)
        top_sim, top_idx = sim.topk(k_max, dim=1)  # (q, k_max), sorted
        votes = F.one_hot(bank_labels[top_idx], num_classes).float()  # (q, k_max, C)
        y = query_labels[start : start + chunk]  # (q,)
        for k in ks:
            kk = min(k, k_max)
            for t in temperatures:
                weights = (top_sim[:, :kk] / t).exp()  # (q, kk)
                scores = (votes[:, :kk] * weights.unsqueeze(-1)).sum(1)  # (q, C)
                pred = scores.topk(top, dim=1).indices  # (q, 5)
                hits[(k, t)] += torch.stack([(pred[:, 0] == y).sum(), (pred == y[:, None]).any(1).sum()]).float()
    n = max(1, query.shape[0])
    return {key: (float(h[0]) / n, float(h[1]) / n) for key, h in hits.items()}


#: Named kNN settings of other projects: the grid of k and t they report and the cell (k, t) of their tables,
#: each read from its source (commit, file:line). All use L2-normalised features and exp(similarity / t)
#: weights, as :func:`knn_predict`; cssl takes the backbone's pooled features (before any projector) in every
#: preset.
KNN_PRESETS: dict[str, dict[str, Any]] = {
    # facebookresearch/dino 7c446df eval_knn.py:194 (--nb_knn default [10, 20, 100, 200]) and :196
    # (--temperature default 0.07); features: the backbone output (eval_knn.py:60, num_classes=0), :81-82 normalised
    # (help: "20 is usually working the best": the cell of the table)
    "dino": {"k": [10, 20, 100, 200], "t": [0.07], "main": (20, 0.07)},
    # facebookresearch/moco branch colab-notebook f736491 colab/moco_cifar10_demo.ipynb (raw JSON) lines
    # 172-173: --knn-k 200, --knn-t 0.1. The demo's features are encoder_q's output, which includes the fc
    # layer to 128 dimensions (ModelBase, lines 343-355), not the pooled features that cssl uses.
    "moco_demo": {"k": [200], "t": [0.1], "main": (200, 0.1)},
    # lightly-ai/lightly e8d317f docs/source/getting_started/benchmarks/cifar10_benchmark.py:105-106
    # (knn_k 200, knn_t 0.1); benchmarks.rst:142 (k=200); features: backbone output, benchmark_module.py:127-128
    "lightly_cifar": {"k": [200], "t": [0.1], "main": (200, 0.1)},
    # lightly-ai/lightly e8d317f docs/source/getting_started/benchmarks/imagenette_benchmark.py:127-128 set
    # knn_k 200, knn_t 0.1, while benchmarks.rst:98 says the Imagenette table used k=20: the preset evaluates
    # both and reports the documented k=20 as its cell
    "lightly_imagenette": {"k": [20, 200], "t": [0.1], "main": (20, 0.1)},
}
