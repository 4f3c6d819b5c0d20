"""MoCo v2 (He et al. 2020; Chen et al. 2020): momentum key encoder + FIFO queue pool + an estimator.
MoChi (Kalantidis et al. 2020): MoCo plus per-query synthetic hard negatives (a logits transform).

One step, in this order: EMA update of the key encoder, key forward (no gradient, key BN mode), loss over
logits [q.k | q.queue (| q.synthetic)] / t with the positive first, and after the optimiser step the keys
of all ranks are enqueued (never the synthetic negatives).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from cssl.contrastive import QueuePool, mochi_negatives
from cssl.contrastive.estimators import at_least_fp32
from cssl.core.errors import check, check_int, is_int
from cssl.methods.contrast import ContrastiveMethod
from cssl.methods.target import MomentumTarget

QUEUE_SIZE = 65536  # MoCo's ImageNet default


class MoCo(MomentumTarget, ContrastiveMethod):
    """MoCo v2: queries from the online encoder, keys from its EMA copy, negatives from a queue of keys.

    Args:
        temperature: t of the logits.
            The estimator (``infonce`` for MoCo, ``dcl``, ``hcl``) over the queue's negatives and its parameters
            are :class:`ContrastiveMethod` arguments.
        queue_size: K, entries of the queue.
        proj_output_dim: dimension of the projections (queries, keys, negatives).
        symmetric: both views serve as query, the two losses are averaged and both key sets enqueued.
        query_bn_splits: in training, the query batch goes through the backbone as this many interleaved groups
            (images i, i + S, i + 2S, ...), each with its own BN statistics: the SplitBatchNorm of MoCo's CIFAR demo
            (moco_cifar10_demo.ipynb, cell 8), which simulates 8 GPUs on one. 1: one pass over the batch.
        **kwargs: :class:`MomentumTarget` arguments (momentum, key BN, projector) and the negatives'.
    """

    ema_before_forward = True  # the EMA step opens each step, before the key forward (moco/builder.py)

    def __init__(
        self,
        backbone: nn.Module,
        *,
        temperature: float = 0.2,
        queue_size: int = QUEUE_SIZE,
        proj_output_dim: int = 128,
        symmetric: bool = False,
        query_bn_splits: int = 1,
        **kwargs: Any,
    ) -> None:
        check_int("method.queue_size", queue_size, 1)
        check_int("method.query_bn_splits", query_bn_splits, 1)
        super().__init__(backbone, temperature=temperature, proj_output_dim=proj_output_dim, **kwargs)
        self.symmetric = bool(symmetric)
        self.query_bn_splits = query_bn_splits
        self.queue = QueuePool(queue_size, proj_output_dim)
        self._pending_keys: Tensor | None = None
        if self.negatives.fnc != "none":  # the queue entries' labels, for neg/fnc_precision only (-1: unknown)
            self.queue_labels = QueuePool(queue_size, 1)
            self.queue_labels.queue.fill_(-1)
        self._pending_labels: Tensor | None = None

    # -- the step ------------------------------------------------------------------------------------
    def contrast(self, views: list[Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        momentum = self.step_momentum_pairs()  # the key encoder's EMA step, once per optimiser step
        feats = self.query_features(views[0])  # (B, F)
        q = self.projector(feats)  # (B, D)
        k = self.keys(views[1])  # (B, D)
        fnc = self.negatives.fnc != "none"
        k2 = self.keys(views[0]) if self.symmetric and fnc else None  # (B, D): joins FNC's support set
        support = self.negatives.support_set([k] if k2 is None else [k, k2], self.keys) if fnc else None
        pos, neg, mask, extra_pos = self.query_negatives(q, k, support)  # (B,), (B, K [+ S]), masks or None
        loss = self.negatives.loss(pos, neg, mask, extra_pos)
        pending = [k]
        if self.symmetric:
            q2 = self.projector(self.query_features(views[1]))  # (B, D)
            k2 = self.keys(views[0]) if k2 is None else k2  # (B, D)
            loss = (loss + self.negatives.loss(*self.query_negatives(q2, k2, support))) / 2
            pending.append(k2)
        self._pending_keys = torch.cat(pending)  # (B or 2B, D), enqueued after the optimiser step
        if self.negatives.labels is not None:
            self._pending_labels = torch.cat([self.negatives.labels] * len(pending))  # (B or 2B,)
        return loss, feats, self._diagnostics(pos, neg, momentum)

    def query_features(self, x: Tensor) -> Tensor:
        """Backbone features (B, F) of the queries; in training with ``query_bn_splits`` S > 1, the batch is
        forwarded as S interleaved groups x[s::S], each with its own BN statistics, and put back in order."""
        splits = min(self.query_bn_splits, x.shape[0] // 2)
        if not self.training or splits <= 1:
            return self.backbone(x)  # (B, F)
        b = x.shape[0]
        order = torch.cat([torch.arange(s, b, splits, device=x.device) for s in range(splits)])  # (B,)
        feats = torch.cat([self.backbone(x[s::splits]) for s in range(splits)])  # (B, F), grouped order
        return feats[torch.argsort(order)]  # (B, F), batch order

    def after_batch(self, stepped: bool = True) -> None:
        """Enqueue this batch's keys (every micro-batch's, as the official loop does per iteration)."""
        super().after_batch(stepped)
        if self._pending_keys is not None:
            if hasattr(self, "queue_labels"):  # in step with the keys (-1 where no labels came with the batch)
                y = self._pending_labels
                n = self._pending_keys.shape[0]
                y = self._pending_keys.new_full((n,), -1.0) if y is None or y.shape[0] != n else y.float()
                self.queue_labels.enqueue(y[:, None])
            self.queue.enqueue(self._pending_keys)
            self._pending_keys, self._pending_labels = None, None

    def query_logits(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Cosine similarities of the unit queries with their key and with the negatives.

        Args:
            q: (B, D) queries (normalised here, in fp32); k: (B, D) keys.

        Returns:
            pos (B,) = q.k, and neg (B, K + S) = [q.queue | q.synthetic] (S = 0 for MoCo).
        """
        pos, neg, _, _ = self.query_negatives(q, k)
        return pos, neg

    def query_negatives(
        self, q: Tensor, k: Tensor, support: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """As :meth:`query_logits`, after the negative selection (FNC on the queue, detected against the
        momentum ``support`` (B, S', D); the ring), with the mask of the negatives and the extra positives
        (None when no selection is on). MoChi mixes only the queue entries that remain."""
        with torch.autocast(device_type=q.device.type, enabled=False):
            q = F.normalize(at_least_fp32(q), dim=1)  # (B, D)
            k = F.normalize(at_least_fp32(k.detach()), dim=1).to(q.dtype)  # (B, D)
            pos = (q * k).sum(1)  # (B,)
            queue = self.queue.negatives().to(q.dtype)  # (K, D)
            neg = q @ queue.T  # (B, K)
            mask = extra_pos = None
            ranked = neg
            if self.negatives.selecting:
                queued = self.queue_labels.queue[:, 0].long() if hasattr(self, "queue_labels") else None  # (K,)
                selection = self.negatives.select(
                    neg, None, support=support, candidates=queue, labels=self.negatives.labels, candidate_labels=queued
                )
                mask, extra_pos = selection.mask, selection.extra_pos  # (B, K) each
                ranked = neg.detach().masked_fill(~mask, float("-inf"))  # MoChi's hardest among the survivors
            extra = self.extra_negatives(q, ranked)  # (B, S, D) or None
            if extra is not None:
                neg = torch.cat([neg, torch.einsum("bd,bsd->bs", q, extra.to(q.dtype))], dim=1)  # (B, K + S)
                s = extra.shape[1]
                if mask is not None:
                    mask = torch.cat([mask, mask.new_ones(mask.shape[0], s)], dim=1)  # (B, K + S)
                if extra_pos is not None:
                    extra_pos = torch.cat([extra_pos, extra_pos.new_zeros(extra_pos.shape[0], s)], dim=1)
        return pos, neg, mask, extra_pos

    def extra_negatives(self, q: Tensor, sim: Tensor) -> Tensor | None:
        """Per-query negatives appended to each row (a logits transform) given the unit queries (B, D) and
        their queue similarities (B, K); MoCo has none."""
        return None

    def _diagnostics(self, pos: Tensor, neg: Tensor, momentum: float) -> dict[str, Tensor]:
        """Every step: the momentum (when scheduled); every ``diagnostics.every_n_steps``: the standard
        ``neg/...`` set over the real (queue) negatives, the queue's age, and MoChi's synthetic vs real."""
        logs = {"train/momentum": torch.tensor(momentum)} if self.key_encoder.schedule != "constant" else {}
        if not self.diagnose():
            return logs
        k = self.queue.size
        logs.update(self.negative_diagnostics(pos, neg[:, :k]))
        age = self.queue.age.float()
        logs["neg/queue_age_mean"], logs["neg/queue_age_max"] = age.mean(), age.max()
        if neg.shape[1] > k:  # MoChi: similarity of the synthetic negatives vs the real ones
            synthetic = neg[:, k:].detach().float()
            logs["neg/synthetic_sim_mean"] = synthetic.mean()
            logs["neg/synthetic_minus_real_sim"] = synthetic.mean() - logs["neg/neg_sim_mean"]
        return logs


class MoChi(MoCo):
    """MoCo with hard negative mixing: per query, s mixes of pairs of its ``n_hard`` hardest queue entries
    and s' mixes of the query with one of them, appended to its row only and never enqueued.

    Args:
        n_hard: N, hardest queue entries of each query to mix (<= queue_size).
        s: mixes of two hard negatives per query.
        s_prime: mixes of the query with a hard negative per query.
        mochi_warmup_epochs: plain MoCo for the first epochs, mixing from then on.
        **kwargs: :class:`MoCo` arguments.
    """

    method_knobs = ("mochi",)  # a hardness curriculum may drive the mixes

    def __init__(
        self,
        backbone: nn.Module,
        *,
        n_hard: int = 1024,
        s: int = 512,
        s_prime: int = 256,
        mochi_warmup_epochs: int = 10,
        **kwargs: Any,
    ) -> None:
        check_int("method.n_hard", n_hard, 1)
        check_int("method.s", s, 0)
        check_int("method.s_prime", s_prime, 0)
        check_int("method.mochi_warmup_epochs", mochi_warmup_epochs, 0)
        queue_size = kwargs.get("queue_size", QUEUE_SIZE)
        if is_int(queue_size):
            check(n_hard <= queue_size, f"method.n_hard={n_hard} exceeds method.queue_size={queue_size}; lower n_hard")
        super().__init__(backbone, **kwargs)
        self.n_hard, self.s, self.s_prime, self.mochi_warmup_epochs = n_hard, s, s_prime, mochi_warmup_epochs

    def mixing_active(self) -> bool:
        return self.s + self.s_prime > 0 and self.current_epoch >= self.mochi_warmup_epochs

    def current_mixes(self) -> tuple[int, int]:
        """(s, s') at this step: under the curriculum round(h * s), round(h * s') (NEGATIVES.md 4.2)."""
        return round(self.negatives.ease(0, self.s)), round(self.negatives.ease(0, self.s_prime))

    def extra_negatives(self, q: Tensor, sim: Tensor) -> Tensor | None:
        s, s_prime = self.current_mixes()
        if not self.mixing_active() or s + s_prime == 0:
            return None
        negatives = self.queue.negatives()
        return mochi_negatives(
            q, negatives, n_hard=self.n_hard, s=s, s_prime=s_prime, sim=sim.detach()
        )  # (B, s + s', D)
