"""What a pretraining run watches on held-out data at each validation: a weighted kNN of the held-out split
against the labelled train split (the bank), and optionally the representation's uniformity, false-negative
rate and the alignment of positive pairs. Features are collected per batch and scored once per epoch."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from cssl.contrastive.diagnostics import alignment, false_negative_rate, negative_stats, uniformity
from cssl.eval.knn import knn_predict

BANK, HELD_OUT = 0, 1


class KnnMonitor:
    """Collects validation features (unit, fp32) of the bank and the held-out split, and pairs of held-out
    views, then scores them.

    Args:
        num_classes, k, temperature: the kNN classifier.
        false_negative_k: k of ``val/false_negative_rate``.
    """

    def __init__(self, num_classes: int, *, k: int, temperature: float, false_negative_k: int) -> None:
        self.num_classes, self.k, self.temperature, self.false_negative_k = (
            num_classes,
            k,
            temperature,
            false_negative_k,
        )
        self.embedding: tuple[Tensor, Tensor] | None = None  # the last held-out (features, labels)
        self.reset()

    def reset(self) -> None:
        self.feats: dict[int, list[Tensor]] = {BANK: [], HELD_OUT: []}
        self.labels: dict[int, list[Tensor]] = {BANK: [], HELD_OUT: []}
        self.pairs: list[Tensor] = []

    def add(self, split: int, feats: Tensor, labels: Tensor) -> None:
        """Backbone features (B, F) and labels (B,) of a batch of the bank (0) or the held-out split (1)."""
        self.feats[split].append(F.normalize(feats.float(), dim=1))
        self.labels[split].append(labels)

    def add_pair(self, first: Tensor, second: Tensor) -> None:
        """Backbone features (B, F) of two augmented views of the same held-out images."""
        self.pairs.append(torch.stack([first, second]))  # (2, B, F)

    def compute(self, gather: Callable[[Tensor], Tensor], *, diagnostics: bool) -> dict[str, Tensor]:
        """``val/knn_top1`` (and with ``diagnostics`` ``val/uniformity``, ``val/false_negative_rate``,
        ``val/alignment``) over the rows of every rank (``gather``); empty without both splits."""
        if not self.num_classes and self.feats[HELD_OUT]:
            return self.label_free(gather)
        if not self.feats[BANK] or not self.feats[HELD_OUT]:
            return {}
        bank, bank_y, query, query_y = (
            gather(torch.cat(store[i])) for i in (BANK, HELD_OUT) for store in (self.feats, self.labels)
        )
        keep = bank_y >= 0
        scores = knn_predict(query, bank[keep], bank_y[keep], self.num_classes, k=self.k, temperature=self.temperature)
        logs = {"val/knn_top1": (scores.argmax(1) == query_y).float().mean()}
        self.embedding = (query.detach(), query_y.detach())  # to the host only if a map is drawn
        if diagnostics:
            logs["val/uniformity"] = uniformity(query)
            logs["val/false_negative_rate"] = false_negative_rate(query, query_y, self.false_negative_k)
            if self.pairs:
                pairs = gather(torch.cat(self.pairs, dim=1).transpose(0, 1)).transpose(0, 1)  # (2, N_g, F)
                logs["val/alignment"] = alignment(pairs[0], pairs[1])
        return logs

    def label_free(self, gather: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
        """What unlabelled held-out images tell (``num_classes`` 0): ``val/uniformity`` of their features and,
        with view pairs, ``val/alignment``, ``val/effective_negatives`` and ``val/pair_loss`` (InfoNCE at
        the kNN temperature of each first view against every second view, the other images the negatives)."""
        query = gather(torch.cat(self.feats[HELD_OUT]))
        self.embedding = (query.detach(), gather(torch.cat(self.labels[HELD_OUT])).detach())
        logs = {"val/uniformity": uniformity(query)}
        if self.pairs:
            pairs = gather(torch.cat(self.pairs, dim=1).transpose(0, 1)).transpose(0, 1)  # (2, N_g, F)
            z1, z2 = F.normalize(pairs[0].float(), dim=1), F.normalize(pairs[1].float(), dim=1)
            sim = z1 @ z2.T  # (N, N)
            n = sim.shape[0]
            off = ~torch.eye(n, dtype=torch.bool, device=sim.device)  # (N, N): the negatives
            negatives = sim[off].view(n, n - 1) if n > 1 else sim[:, :0]
            logs["val/alignment"] = alignment(pairs[0], pairs[1])
            if n > 1:
                stats = negative_stats(sim.diagonal(), negatives, self.temperature)
                logs["val/effective_negatives"] = stats["neg/effective_negatives"]
            target = torch.arange(n, device=sim.device)
            logs["val/pair_loss"] = F.cross_entropy(sim / self.temperature, target)
        return logs
