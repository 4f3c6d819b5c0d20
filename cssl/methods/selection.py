"""What every method shares about negative selection and the hardness curriculum (NEGATIVES.md): the
configured :class:`~cssl.contrastive.negatives.NegativeSelector` (FNC, ring), the curriculum's h(p) and the
knobs it drives, FNC's support views, and the step's selection diagnostics.

A mixin of :class:`cssl.methods.base.ContrastiveMethod` (kept apart so that the base class stays small); its
hooks are called by the methods' steps: ``select_negatives`` on each row set of negatives, ``support_embeddings``
for FNC's extra views. It reads the base's ``estimator``, ``beta``, ``diagnose()`` and the trainer's step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cssl.contrastive.negatives import RING_EASY_OUTER, NegativeSelector, Selection, check_curriculum, ease, hardness
from cssl.core.errors import check


class NegativeSelection:
    """FNC, the ring and the curriculum of a method (see :meth:`init_selection` for the arguments)."""

    estimator: str
    beta: float
    beta_anneal: bool

    def init_selection(
        self,
        *,
        fnc: str,
        fnc_top_k: int | None,
        fnc_threshold: float | None,
        fnc_support_views: int,
        fnc_aggregation: str,
        ring_outer: float | None,
        ring_inner: float,
        curriculum: str,
        curriculum_end: float,
    ) -> None:
        """Validate and store the selection (one-line :class:`~cssl.core.errors.ConfigError` on a bad value)."""
        self.negatives = NegativeSelector(
            fnc=fnc,
            fnc_top_k=fnc_top_k,
            fnc_threshold=fnc_threshold,
            fnc_support_views=fnc_support_views,
            fnc_aggregation=fnc_aggregation,
            ring_outer=ring_outer,
            ring_inner=ring_inner,
        )
        check_curriculum(curriculum, curriculum_end)
        self.curriculum, self.curriculum_end = curriculum, curriculum_end
        self._batch_labels: Tensor | None = None  # this step's labels (diagnostics only)
        self._support_views: list[Tensor] = []  # this step's FNC support views (images)
        self._selection_logs: dict[str, Tensor] = {}

    def curriculum_knobs(self) -> list[str]:
        """The hardness knobs that are on, which ``curriculum`` drives (a subclass adds its own)."""
        knobs = ["beta"] if self.estimator == "hcl" and self.beta > 0 else []
        return knobs + (["ring_outer"] if self.negatives.ring_outer is not None else [])

    def check_curriculum_knobs(self) -> None:
        if self.curriculum == "none":
            return
        check(
            not self.beta_anneal,
            "method.curriculum raises HCL's beta while method.beta_anneal lowers it: turn one of them off",
        )
        check(
            bool(self.curriculum_knobs()),
            f"method.curriculum={self.curriculum} drives HCL's beta (estimator=hcl, beta > 0), the ring "
            "(method.ring_outer) or MoChi's mixes, and none of them is on",
        )

    def training_progress(self) -> float:
        """p = global_step / total optimiser steps, in [0, 1] (0 without a trainer)."""
        if self._trainer is None:
            return 0.0
        total = self.trainer.estimated_stepping_batches
        if not (isinstance(total, int | float) and 0 < total < float("inf")):
            return 0.0
        return min(1.0, max(0.0, self.global_step / total))

    def current_hardness(self) -> float:
        """h(p) of the curriculum at this step (1: every knob at its configured value)."""
        return hardness(self.training_progress(), self.curriculum, self.curriculum_end)

    def current_ring_outer(self) -> float | None:
        """The ring's outer fraction at this step: from 1 down to ``ring_outer`` under the curriculum."""
        outer = self.negatives.ring_outer
        if outer is None or self.curriculum == "none":
            return outer
        return ease(RING_EASY_OUTER, outer, self.current_hardness())

    def select_negatives(
        self,
        sim: Tensor,
        neg_mask: Tensor | None,
        *,
        support: Tensor | None = None,
        candidates: Tensor | None = None,
        image_of_row: Tensor | None = None,
        labels: Tensor | None = None,
        candidate_labels: Tensor | None = None,
    ) -> Selection:
        """FNC and the ring on one (sim (A, M), mask) row set; their diagnostics are logged by the step."""
        diagnose = self.diagnose()
        selection = self.negatives.select(
            sim.detach(),
            neg_mask,
            support=support,
            candidates=candidates,
            image_of_row=image_of_row,
            ring_outer=self.current_ring_outer(),
            labels=labels if diagnose else None,
            candidate_labels=candidate_labels if diagnose else None,
            diagnose=diagnose,
        )
        for name, value in selection.logs.items():
            self._selection_logs.setdefault(name, value)  # the first row set of a step (as the neg/ set)
        return selection

    def support_embeddings(self, encode: Any) -> Tensor | None:
        """(B, S, D) embeddings of this step's FNC support views by ``encode`` (one pass, no gradient), or None."""
        views = self._support_views
        if not views:
            return None
        with torch.no_grad():
            out = encode(torch.cat(views))  # (S*B, D)
        return out.reshape(len(views), views[0].shape[0], -1).transpose(0, 1)  # (B, S, D)
