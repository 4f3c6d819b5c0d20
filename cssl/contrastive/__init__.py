"""Pure-torch contrastive parts: estimators, pools, mixing. No Lightning here."""

from cssl.contrastive.estimators import ESTIMATORS, check_estimator, info_nce, info_nce_per_anchor
from cssl.contrastive.losses import in_batch_similarities, nt_xent

__all__ = [
    "ESTIMATORS",
    "check_estimator",
    "in_batch_similarities",
    "info_nce",
    "info_nce_per_anchor",
    "nt_xent",
]
