"""Negative selection: mask transforms of the (pos, neg, mask) frame, applied before the estimator.

- **False-negative cancellation** (FNC; Huynh et al., WACV 2022, official code google-research/fnc):
  per anchor *image*, a candidate is a likely false negative when the maximum (or mean) over the image's
  support views of its similarity is among the row's top k real columns AND above a threshold
  (``objective.py:84-106``). *Elimination* drops them from the negatives (``mask & ~F``); *attraction*
  makes them extra positives (``extra_pos = F``, averaged in log space as ``objective.py:110-129``).
- **Ring** (conditional negatives, CNCE; Wu et al., ICLR 2021, mhw32/contrastive-ring-public
  ``src/objectives/moco.py:111-145``): per anchor, only the real negatives whose similarity rank r (0 =
  most similar) satisfies ``floor(i * floor(o * n)) <= r < floor(o * n)`` stay negatives.
- **Hardness curriculum** (NEGATIVES.md section 4): ``h(p) = min(1, p / p_end) ** gamma`` of training
  progress p, driving any hardness knob from easy (h = 0) to hard (h = 1).

Order (NEGATIVES.md 1.7): FNC detection on the raw mask, elimination or attraction, the ring on
``mask & ~F``, then any mixing (MoChi) among the survivors, then the estimator. Every function is pure
torch, takes detached similarities (the masks are piecewise constant) and needs no host synchronisation.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from cssl.core.errors import ConfigError, check, is_int, is_number

FNC_MODES = ("none", "eliminate", "attract")
AGGREGATIONS = ("max", "mean")
CURRICULA = {"none": None, "linear": 1.0, "sqrt": 0.5}  # name -> exponent gamma of h(p)
RING_EASY_OUTER = 1.0  # the ring's outer fraction at h = 0 (RING policy.py:67-87 anneals 1.0 -> target)


def top_ranked(
    scores: Tensor, mask: Tensor, k: Tensor | int, max_k: int | None = None, max_rest: int | None = None
) -> Tensor:
    """The k_a highest-scoring real columns of each row, ties to the lower column index (tf.math.top_k).

    Args:
        scores: (A, M) scores.
        mask: (A, M) bool, True on the real columns (the only ones ranked).
        k: per-row count (A,) (long) or one int; clipped to the number of real columns of the row.
        max_k: an upper bound of every k_a known on the host (default: M), the width of the top-k pass.
        max_rest: an upper bound of every n_a - k_a (n_a real columns), if known on the host: when it is the
            smaller width, the complement (the n_a - k_a lowest, ties to the higher index) is selected
            instead, so that keeping nearly everything costs a narrow top-k rather than a full sort.

    Returns:
        (A, M) bool.
    """
    a, m = scores.shape
    width = min(m, m if max_k is None else max(0, int(max_k)))
    if max_rest is not None and 0 <= max_rest < width:
        k = torch.as_tensor(k, device=scores.device).expand(a)
        rest = mask.sum(1) - torch.minimum(k, mask.sum(1))  # (A,)
        flipped = top_ranked(-scores.flip(1), mask.flip(1), rest, max_k=max_rest)  # lowest, ties to higher index
        return mask & ~flipped.flip(1)
    if width == 0:
        return torch.zeros_like(mask)
    real = mask.sum(1)  # (A,)
    k = torch.as_tensor(k, device=scores.device).expand(a).clamp(max=width)
    k = torch.minimum(k, real)  # (A,)
    ranked = scores.masked_fill(~mask, float("-inf"))  # (A, M)
    values = ranked.topk(width, dim=1).values  # (A, width), descending
    kth = values.gather(1, (k - 1).clamp(min=0)[:, None])  # (A, 1) score of the k-th column
    above = (ranked > kth) & mask  # (A, M)
    tied = (ranked == kth) & mask  # (A, M)
    room = (k - above.sum(1))[:, None]  # (A, 1) tied columns still admitted
    chosen = above | (tied & (tied.cumsum(1) <= room))  # (A, M): lower indices first among ties
    return chosen & (k > 0)[:, None]


def support_scores(support: Tensor, candidates: Tensor, aggregation: str = "max") -> Tensor:
    """c[g, j] = AGG_v <U[g, v], N[j]> (FNC ``objective.py:79-81``): (G, S', D) x (C, D) -> (G, C).

    Both are L2-normalised here (in their own dtype, at least fp32); no gradient.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    with torch.no_grad():
        dtype = torch.promote_types(torch.promote_types(support.dtype, candidates.dtype), torch.float32)
        u = F.normalize(support.detach().to(dtype), dim=-1)  # (G, S', D)
        c = F.normalize(candidates.detach().to(dtype), dim=-1)  # (C, D)
        sim = torch.einsum("gvd,cd->gvc", u, c)  # (G, S', C)
        return sim.amax(1) if aggregation == "max" else sim.mean(1)  # (G, C)


def detect_false_negatives(
    support: Tensor,
    candidates: Tensor,
    mask: Tensor,
    *,
    image_of_row: Tensor | None = None,
    top_k: int | None = 10,
    threshold: float | None = 0.7,
    aggregation: str = "max",
) -> Tensor:
    """F[a, j] = mask[a, j] and c[g(a), j] > threshold and rank_a(j) < top_k (NEGATIVES.md 1.1).

    Detection is per anchor image and shared by all of its anchor rows (``objective.py:108-127``); k counts
    columns. With the candidates of the global batch (gathered) top-k and threshold are taken across ranks.

    Args:
        support: (G, S', D) support embeddings of each anchor image (official: its two main views, plus
            optional support views); L2-normalised here.
        candidates: (C, D) the vectors of the negative matrix's columns (shared by all rows).
        mask: (A, C) bool, True on each row's real negatives (only those are ranked and detected).
        image_of_row: (A,) the support image g(a) of each row; None: row a is image a (A == G).
        top_k: k (None: no top-k criterion). threshold: theta, strict ``>`` on the cosine (None: none).
        aggregation: ``max`` (official) or ``mean`` over the support views.

    Returns:
        (A, C) bool, the detected false negatives.
    """
    scores = support_scores(support, candidates, aggregation)  # (G, C)
    if image_of_row is not None:
        scores = scores[image_of_row]  # (A, C)
    if scores.shape != mask.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and mask {tuple(mask.shape)} disagree")
    detected = mask.clone()
    if threshold is not None:
        detected &= scores > threshold
    if top_k is not None:
        detected &= top_ranked(scores, mask, int(top_k), max_k=int(top_k))
    return detected


def ring_mask(sim: Tensor, mask: Tensor, outer: float, inner: float) -> Tensor:
    """The ring of each row: its real columns of similarity rank in [floor(i*floor(o*n)), floor(o*n)).

    The official floors on float64 products (``int(o * n)``, dynamic inner: a fraction of the outer set;
    RING ``moco.py:118-127``); the percentile window kept is [100(1-o), 100(1-i*o)). Rows with
    ``o * n < 1`` keep nothing: their loss is 0 (see :func:`cssl.contrastive.info_nce`).

    Args:
        sim: (A, M) anchor-negative similarities (detached here). mask: (A, M) bool, the real negatives.
        outer: o in (0, 1]. inner: i in [0, 1).

    Returns:
        (A, M) bool, the kept negatives (a subset of ``mask``).
    """
    n = mask.sum(1).double()  # (A,)
    n_outer = torch.floor(outer * n).long()  # (A,)
    n_inner = torch.floor(inner * n_outer.double()).long()  # (A,)
    max_outer = math.floor(outer * mask.shape[1])  # host bound of every n_outer
    max_rest = math.floor((1.0 - outer) * mask.shape[1]) + 1  # host bound of every n - n_outer
    sim = sim.detach()
    kept = top_ranked(sim, mask, n_outer, max_k=max_outer, max_rest=max_rest)
    if inner > 0:
        kept &= ~top_ranked(sim, mask, n_inner, max_k=math.floor(inner * max_outer))
    return kept


def hardness(progress: float, schedule: str = "linear", end: float = 0.5) -> float:
    """h(p) = min(1, max(0, p) / p_end) ** gamma (NEGATIVES.md 4.1); ``linear``: gamma 1, ``sqrt``: 1/2.

    h = 1 throughout for ``none`` (no curriculum: every knob at its configured, hard, value) and for
    p_end <= 0. The default p_end 0.5 is CNCE's anneal over 100 of 200 epochs (RING ``moco_ring.json:29,46``);
    ``sqrt`` with p_end 1 is CuCo's root pacing.

    Example:
        >>> [hardness(p) for p in (0.0, 0.1, 0.25, 0.5, 1.0)]
        [0.0, 0.2, 0.5, 1.0, 1.0]
    """
    gamma = CURRICULA[schedule]
    if gamma is None or end <= 0:
        return 1.0
    return min(1.0, max(0.0, progress) / end) ** gamma


def ease(easy: float, hard: float, h: float) -> float:
    """A knob's value at hardness h: easy + (hard - easy) * h, computed as easy * (1 - h) + hard * h so
    that h = 0 and h = 1 give ``easy`` and ``hard`` exactly (the ring's floors are sensitive to the last bit).

    Example:
        >>> ease(1.0, 0.1, 1.0), ease(1.0, 0.1, 0.0)
        (0.1, 1.0)
    """
    return easy * (1.0 - h) + hard * h


@dataclass
class Selection:
    """A transformed row set: the negatives' mask, the extra positives (attraction) and diagnostics."""

    mask: Tensor | None
    extra_pos: Tensor | None = None
    logs: dict[str, Tensor] = field(default_factory=dict)


class NegativeSelector:
    """FNC and the ring as one configured transform of (sim, mask), with their diagnostics.

    Args:
        fnc: ``none``, ``eliminate`` or ``attract``.
        fnc_top_k: k of the detection (columns; None: no top-k criterion). Official 10 (FNC ``run.py:261-263``).
        fnc_threshold: theta of the detection (cosine, strict; None: none). Official 0.7 (``run.py:265-267``).
        fnc_support_views: extra augmented views per image that join the two main views in the support set
            (detection only; official 8, ``run.py:246-248``; cssl default 0).
        fnc_aggregation: ``max`` (official) or ``mean`` over the support set.
        ring_outer: o of the ring in (0, 1], None: no ring. Official 0.1 (RING ``moco_ring.json:24``).
        ring_inner: i of the ring in [0, 1) (a fraction of the outer set). Official 0.1.
    """

    def __init__(
        self,
        *,
        fnc: str = "none",
        fnc_top_k: int | None = 10,
        fnc_threshold: float | None = 0.7,
        fnc_support_views: int = 0,
        fnc_aggregation: str = "max",
        ring_outer: float | None = None,
        ring_inner: float | None = 0.1,
    ) -> None:
        check(fnc in FNC_MODES, f"method.fnc must be one of {', '.join(FNC_MODES)}, got {fnc!r}")
        check(
            fnc_top_k is None or (is_int(fnc_top_k) and fnc_top_k >= 1),
            f"method.fnc_top_k must be an integer >= 1 or null, got {fnc_top_k!r}",
        )
        check(
            fnc_threshold is None or (is_number(fnc_threshold) and -1 <= fnc_threshold <= 1),
            f"method.fnc_threshold must be a cosine in [-1, 1] or null, got {fnc_threshold!r}",
        )
        check(
            is_int(fnc_support_views) and fnc_support_views >= 0,
            f"method.fnc_support_views must be an integer >= 0, got {fnc_support_views!r}",
        )
        check(
            fnc_aggregation in AGGREGATIONS,
            f"method.fnc_aggregation must be one of {', '.join(AGGREGATIONS)}, got {fnc_aggregation!r}",
        )
        check(
            ring_outer is None or (is_number(ring_outer) and 0 < ring_outer <= 1),
            f"method.ring_outer must be in (0, 1] or null (no ring), got {ring_outer!r}",
        )
        if ring_outer is not None:
            check(
                ring_inner is not None and is_number(ring_inner) and 0 <= ring_inner < 1,
                f"method.ring_inner must be in [0, 1), got {ring_inner!r}",
            )
        self.fnc, self.fnc_top_k, self.fnc_threshold = fnc, fnc_top_k, fnc_threshold
        self.fnc_support_views = fnc_support_views if fnc != "none" else 0
        self.fnc_aggregation = fnc_aggregation
        self.ring_outer = ring_outer
        self.ring_inner = float(ring_inner) if ring_outer is not None and ring_inner is not None else 0.0
        self._warned_empty = False

    @property
    def active(self) -> bool:
        return self.fnc != "none" or self.ring_outer is not None

    def select(
        self,
        sim: Tensor,
        mask: Tensor | None,
        *,
        support: Tensor | None = None,
        candidates: Tensor | None = None,
        image_of_row: Tensor | None = None,
        outer: float | None = None,
        labels: Tensor | None = None,
        candidate_labels: Tensor | None = None,
        diagnose: bool = False,
    ) -> Selection:
        """FNC, then the ring, on one row set.

        Args:
            sim: (A, M) anchor-negative similarities. mask: (A, M) real negatives (None: all).
            support, candidates, image_of_row: FNC's inputs (:func:`detect_false_negatives`); the
                candidates are the vectors of the M columns. Needed with FNC on.
            outer: the ring's o at this step (the curriculum's value); default: the configured ``ring_outer``.
            labels: (A,) anchor labels and candidate_labels (M,) the columns' labels (-1: unknown), for
                ``neg/fnc_precision`` only (never used in the loss).
            diagnose: also compute the ``neg/...`` diagnostics (tensors: no host synchronisation).

        Returns:
            :class:`Selection` with the mask of the negatives that remain and, for attraction, the extra
            positives (disjoint from that mask).
        """
        if not self.active:
            return Selection(mask)
        real = torch.ones_like(sim, dtype=torch.bool) if mask is None else mask  # (A, M)
        kept, extra, logs = real, None, {}
        if self.fnc != "none":
            if support is None or candidates is None:
                raise ValueError("false-negative cancellation needs the support set and the candidates")
            detected = detect_false_negatives(
                support,
                candidates,
                real,
                image_of_row=image_of_row,
                top_k=self.fnc_top_k,
                threshold=self.fnc_threshold,
                aggregation=self.fnc_aggregation,
            )  # (A, M)
            kept = real & ~detected
            extra = detected if self.fnc == "attract" else None
            if diagnose:
                logs.update(fnc_diagnostics(detected, real, labels, candidate_labels))
        if self.ring_outer is not None:
            outer = self.ring_outer if outer is None else outer
            self._warn_if_always_empty(outer, sim.shape[1])
            ring = ring_mask(sim, kept, outer, self.ring_inner)  # (A, M)
            if diagnose:
                logs.update(ring_diagnostics(ring, kept))
            kept = ring
        return Selection(kept, extra, logs)

    def _warn_if_always_empty(self, outer: float, columns: int) -> None:
        """Warn once when no row can keep a negative (o * M < 1 or the inner part takes everything)."""
        n_outer = math.floor(outer * columns)
        if not self._warned_empty and n_outer - math.floor(self.ring_inner * n_outer) <= 0:
            self._warned_empty = True
            warnings.warn(
                f"method.ring_outer={outer} keeps no negative of {columns} columns: every ring is empty and the "
                "loss is 0 (raise ring_outer or the number of negatives)",
                stacklevel=3,
            )


@torch.no_grad()
def fnc_diagnostics(
    detected: Tensor, mask: Tensor, labels: Tensor | None = None, candidate_labels: Tensor | None = None
) -> dict[str, Tensor]:
    """``neg/fnc_cancelled`` = sum F / sum mask, and with labels ``neg/fnc_precision``: the share of the
    cancelled (anchor, column) pairs, both labelled, whose labels agree (0 when none is cancelled)."""
    logs = {"neg/fnc_cancelled": detected.sum().float() / mask.sum().clamp(min=1).float()}
    if labels is not None and candidate_labels is not None:
        known = detected & (labels[:, None] >= 0) & (candidate_labels[None, :] >= 0)  # (A, M)
        same = known & (labels[:, None] == candidate_labels[None, :])  # (A, M)
        logs["neg/fnc_precision"] = same.sum().float() / known.sum().clamp(min=1).float()
    return logs


@torch.no_grad()
def ring_diagnostics(ring: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """``neg/ring_kept`` (share of the real negatives kept) and ``neg/ring_empty`` (share of anchors whose
    ring is empty: their loss is 0)."""
    return {
        "neg/ring_kept": ring.sum().float() / mask.sum().clamp(min=1).float(),
        "neg/ring_empty": (~ring.any(1)).float().mean(),
    }


def check_curriculum(curriculum: str, end: float) -> None:
    if curriculum not in CURRICULA:
        raise ConfigError(f"method.curriculum must be one of {', '.join(CURRICULA)}, got {curriculum!r}")
    check(is_number(end) and 0 < end <= 1, f"method.curriculum_end must be in (0, 1], got {end!r}")
