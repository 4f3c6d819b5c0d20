"""The methods that contrast with negatives: a :class:`~cssl.methods.base.Method` that owns one
:class:`~cssl.contrastive.negatives.Negatives` part (estimator, FNC, ring, curriculum), built once from the
``method.*`` keys it names, and hands it each step's labels and support views.

A contrastive method implements :meth:`ContrastiveMethod.contrast` and calls ``self.negatives`` with its
similarities: ``select`` (when ``negatives.selecting``), ``loss``, and on diagnosing steps
:meth:`ContrastiveMethod.negative_diagnostics`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from cssl.contrastive.negatives import OPTIONS, Negatives
from cssl.methods.base import Method, ViewNeeds
from cssl.runtime.loggers import log_histograms


class ContrastiveMethod(Method):
    """Base of the methods with negatives.

    Args:
        temperature: t of the loss (each method has its own default).
        **kwargs: the :class:`~cssl.contrastive.negatives.Negatives` keywords (estimator, tau_plus, beta,
            beta_anneal, fnc*, ring_*, curriculum*, diagnostics_top_k), then :class:`Method`'s.
    """

    #: Hardness knobs of the method itself that a curriculum may drive (e.g. a number of synthetic negatives).
    method_knobs: tuple[str, ...] = ()

    def __init__(self, backbone: Any, *, temperature: float = 0.5, **kwargs: Any) -> None:
        options = {key: kwargs.pop(key) for key in OPTIONS if key in kwargs}
        negatives = self.negatives_of(temperature=temperature, **options)
        super().__init__(backbone, **kwargs)
        negatives.progress, negatives.epochs = self.training_progress, self.epochs
        self.negatives = negatives
        self.needs = ViewNeeds(support=negatives.support_views)

    @classmethod
    def negatives_of(cls, **options: Any) -> Negatives:
        """The part the ``method.*`` ``options`` describe (a one-line ConfigError on a bad value)."""
        return Negatives(**options, method_knobs=cls.method_knobs)

    @classmethod
    def view_needs(cls, **options: Any) -> ViewNeeds:
        part = cls.negatives_of(**{key: options[key] for key in OPTIONS if key in options})
        return ViewNeeds(support=part.support_views)

    def contrast(self, views: list[Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The method's loss over its views (as :meth:`Method.ssl_step`), with ``self.negatives`` set for
        this step."""
        raise NotImplementedError

    def ssl_step(
        self, views: list[Tensor], support: list[Tensor] | None = None, labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        self.negatives.begin_step(labels=labels, support=support or (), diagnose=self.diagnose())
        loss, feats, logs = self.contrast(views)
        return loss, feats, {**logs, **self.negatives.step_logs()}

    def negative_diagnostics(self, pos: Tensor, neg: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """``neg/...`` metrics of one row set of (pos (B,), neg (B, M)) similarities, and their histograms."""
        pos, neg = pos.detach(), neg.detach()
        logs = self.negatives.diagnostics(pos, neg, mask)
        log_histograms(self.logger, self.global_step, pos, neg if mask is None else neg[mask])
        return logs
