"""The negatives of a contrastive method as one part: the estimator, the negative selection (FNC, ring) and
the hardness curriculum, built once from their keywords and called by the methods that contrast.

A method hands it cosine similarities, ``pos (B,)`` and ``neg (B, M)`` with an optional mask of the real
negatives, and gets back the selection, the loss and the ``neg/...`` diagnostics. Every knob that changes
over training (HCL's beta under the curriculum or the official anneal, the ring's outer fraction, a
method's own knob such as MoChi's mixes) is read from the training clock the method gives it, so the part
holds no trainer and no config: pure torch, like the rest of :mod:`cssl.contrastive`.

Example:
    >>> import torch
    >>> part = Negatives(temperature=0.5, estimator="hcl", tau_plus=0.1, beta=1.0)
    >>> pos, neg = torch.tensor([0.9, 0.8]), torch.tensor([[0.1, 0.3], [0.2, -0.1]])
    >>> round(part.loss(pos, neg).item(), 4) == round(part.loss(pos, neg, torch.ones(2, 2, dtype=torch.bool)).item(), 4)
    True
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from cssl.contrastive.diagnostics import step_diagnostics
from cssl.contrastive.estimators import annealed_beta, check_estimator, info_nce
from cssl.contrastive.losses import nt_xent
from cssl.contrastive.selection import (
    RING_EASY_OUTER,
    NegativeSelector,
    Selection,
    check_curriculum,
    ease,
    hardness,
)
from cssl.core.errors import check, check_int


def _no_progress() -> float:
    return 0.0


def _first_epoch() -> tuple[int, int]:
    return 0, 1


class Negatives:
    """Estimator + selection + curriculum of one method, with their diagnostics.

    Args:
        temperature, estimator, tau_plus, beta: the loss (:func:`cssl.contrastive.info_nce`); every estimator
            works with every pool of negatives.
        beta_anneal: lower HCL's beta to 0 in 9 steps over the epochs, as the official code
            (:func:`~cssl.contrastive.estimators.annealed_beta`).
        curriculum: ``none``, ``linear`` or ``sqrt``: h(p) of training progress drives the hardness knobs that
            are on from easy to hard (HCL's beta from 0, the ring's outer fraction from 1, the method's own),
            reaching them at progress ``curriculum_end`` (:func:`~cssl.contrastive.selection.hardness`).
        diagnostics_top_k: k of ``neg/hardness`` (mean of each anchor's k most similar negatives).
        method_knobs: hardness knobs of the method itself (MoChi: ``("mochi",)``), so that a curriculum
            with no other knob on is still valid.
        progress: the training clock, p in [0, 1] (default: always 0).
        epochs: (current epoch, epochs of the run), for ``beta_anneal`` (default: (0, 1)).
        **selection: the negative selection's keywords and defaults, :class:`NegativeSelector`'s (``fnc``,
            ``fnc_top_k``, ``fnc_threshold``, ``fnc_support_views``, ``fnc_aggregation``, ``ring_outer``,
            ``ring_inner``).
    """

    def __init__(
        self,
        *,
        temperature: float = 0.5,
        estimator: str = "infonce",
        tau_plus: float = 0.0,
        beta: float = 0.0,
        beta_anneal: bool = False,
        curriculum: str = "none",
        curriculum_end: float = 0.5,
        diagnostics_top_k: int = 5,
        method_knobs: Sequence[str] = (),
        progress: Callable[[], float] = _no_progress,
        epochs: Callable[[], tuple[int, int]] = _first_epoch,
        **selection: Any,
    ) -> None:
        check_estimator(estimator, temperature, tau_plus, beta)
        unknown = sorted(set(selection) - set(SELECTION_OPTIONS))
        if unknown:
            raise TypeError(f"Negatives got unexpected keyword arguments {unknown}")
        self.selector = NegativeSelector(**selection)
        check_curriculum(curriculum, curriculum_end)
        check_int("diagnostics.top_k", diagnostics_top_k, 1)
        self.temperature, self.estimator, self.tau_plus, self.beta_max = temperature, estimator, tau_plus, beta
        self.beta_anneal = bool(beta_anneal)
        self.curriculum, self.curriculum_end = curriculum, curriculum_end
        self.diagnostics_top_k = diagnostics_top_k
        self.progress, self.epochs = progress, epochs
        self._check_knobs(tuple(method_knobs))
        self.begin_step()

    def _check_knobs(self, method_knobs: tuple[str, ...]) -> None:
        if self.curriculum == "none":
            return
        check(
            not self.beta_anneal,
            "method.curriculum raises HCL's beta while method.beta_anneal lowers it: turn one of them off",
        )
        knobs = (["beta"] if self.estimator == "hcl" and self.beta_max > 0 else []) + list(method_knobs)
        knobs += ["ring_outer"] if self.selector.ring_outer is not None else []
        check(
            bool(knobs),
            f"method.curriculum={self.curriculum} drives HCL's beta (estimator=hcl, beta > 0), the ring "
            "(method.ring_outer) or MoChi's mixes, and none of them is on",
        )

    # -- what the part is configured to do ------------------------------------------------------------
    @property
    def selecting(self) -> bool:
        """Whether FNC or the ring rewrites the negatives (else the plain pool goes to the estimator)."""
        return self.selector.active

    @property
    def fnc(self) -> str:
        return self.selector.fnc

    @property
    def support_views(self) -> int:
        """Extra augmented views per image that FNC's detection needs (0 unless FNC is on)."""
        return self.selector.fnc_support_views

    # -- knobs at this point of training --------------------------------------------------------------
    def hardness(self) -> float:
        """h(p) of the curriculum now (1: every knob at its configured value)."""
        return hardness(self.progress(), self.curriculum, self.curriculum_end)

    def ease(self, easy: float, hard: float) -> float:
        """A hardness knob's value now: ``hard`` without a curriculum, else eased from ``easy``."""
        return hard if self.curriculum == "none" else ease(easy, hard, self.hardness())

    def beta(self) -> float:
        """HCL's beta now: raised from 0 by the curriculum (NEGATIVES.md 4.2), lowered by ``beta_anneal``
        (the official per-epoch schedule), else as configured."""
        if self.curriculum != "none":
            return ease(0.0, self.beta_max, self.hardness())
        if not self.beta_anneal:
            return self.beta_max
        epoch, epochs = self.epochs()
        return annealed_beta(self.beta_max, epoch, epochs)

    def ring_outer(self) -> float | None:
        """The ring's outer fraction now: from 1 down to ``ring_outer`` under the curriculum."""
        outer = self.selector.ring_outer
        return outer if outer is None else self.ease(RING_EASY_OUTER, outer)

    # -- one training step ----------------------------------------------------------------------------
    def begin_step(
        self, *, labels: Tensor | None = None, support: Sequence[Tensor] = (), diagnose: bool = False
    ) -> None:
        """Start a step: its labels (diagnostics only), FNC's support views (images) and whether it diagnoses."""
        self.labels, self.support, self.diagnose = labels, list(support), diagnose
        self._selection_logs: dict[str, Tensor] = {}

    def step_logs(self) -> dict[str, Any]:
        """What the step logs about the part: the selection's ``neg/...`` (first row set), the annealed
        ``train/beta`` and the curriculum's ``curriculum/h``."""
        logs: dict[str, Any] = dict(self._selection_logs)
        if self.beta_anneal:
            logs["train/beta"] = float(self.beta())
        if self.curriculum != "none":
            logs["curriculum/h"] = self.hardness()
        return logs

    def support_embeddings(self, encode: Callable[[Tensor], Tensor]) -> Tensor | None:
        """(B, S, D) embeddings of this step's FNC support views by ``encode`` (one pass, no gradient), or None."""
        if not self.support:
            return None
        with torch.no_grad():
            out = encode(torch.cat(self.support))  # (S*B, D)
        return out.reshape(len(self.support), self.support[0].shape[0], -1).transpose(0, 1)  # (B, S, D)

    def support_set(self, main: Sequence[Tensor], encode: Callable[[Tensor], Tensor]) -> Tensor:
        """FNC's support set of each image (NEGATIVES.md 1.7): the embeddings of its main views (B, D) each,
        detached, then its support views' by ``encode`` (no gradient): (B, V + S, D)."""
        support = torch.stack([z.detach() for z in main], dim=1)  # (B, V, D)
        extra = self.support_embeddings(encode)  # (B, S, D) or None
        return support if extra is None else torch.cat([support, extra.to(support.dtype)], dim=1)

    def select(self, sim: Tensor, mask: Tensor | None, **inputs: Any) -> Selection:
        """FNC and the ring on one (sim (A, M), mask) row set at this step's ring width; ``inputs`` are
        :meth:`NegativeSelector.select`'s (support, candidates, image_of_row, labels, candidate_labels), the
        labels serving only ``neg/fnc_precision`` on diagnosing steps."""
        if not self.diagnose:
            inputs = {k: v for k, v in inputs.items() if k not in ("labels", "candidate_labels")}
        selection = self.selector.select(sim.detach(), mask, outer=self.ring_outer(), diagnose=self.diagnose, **inputs)
        for name, value in selection.logs.items():
            self._selection_logs.setdefault(name, value)  # the first row set of a step (as the neg/ set)
        return selection

    def loss(self, pos: Tensor, neg: Tensor, mask: Tensor | None = None, extra_pos: Tensor | None = None) -> Tensor:
        """The estimator over (pos (B,), neg (B, M)) cosine similarities, mean over anchors (``extra_pos``:
        false-negative attraction's extra positives)."""
        return info_nce(
            pos,
            neg,
            self.temperature,
            estimator=self.estimator,
            tau_plus=self.tau_plus,
            beta=self.beta(),
            neg_mask=mask,
            extra_pos=extra_pos,
        )

    def in_batch_loss(self, z1: Tensor, z2: Tensor) -> Tensor:
        """The estimator over the in-batch pool of two views (B, D) each, gathered across ranks (NT-Xent)."""
        return nt_xent(z1, z2, self.temperature, estimator=self.estimator, tau_plus=self.tau_plus, beta=self.beta())

    def diagnostics(self, pos: Tensor, neg: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """The ``neg/...`` set of one row set of (detached) similarities, with this step's estimator."""
        return step_diagnostics(
            pos,
            neg,
            mask,
            temperature=self.temperature,
            estimator=self.estimator,
            tau_plus=self.tau_plus,
            beta=self.beta(),
            top_k=self.diagnostics_top_k,
        )


def _keywords(cls: type, *exclude: str) -> dict[str, Any]:
    return {
        name: p.default
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind is p.KEYWORD_ONLY and name not in exclude
    }


#: The negative selection's keywords with their defaults (:class:`NegativeSelector`'s).
SELECTION_OPTIONS: dict[str, Any] = _keywords(NegativeSelector)
#: The keywords of the part that come from the configuration (``method.<key>``), with their defaults.
OPTIONS: dict[str, Any] = {**_keywords(Negatives, "method_knobs", "progress", "epochs"), **SELECTION_OPTIONS}
