"""Pure-torch contrastive parts: estimators, pools, mixing. No Lightning here."""

from cssl.contrastive.adversarial import AdversarialBank, adversarial_similarities, bank_loss_and_gradient
from cssl.contrastive.estimators import ESTIMATORS, check_estimator, info_nce, info_nce_per_anchor
from cssl.contrastive.losses import in_batch_similarities, nt_xent
from cssl.contrastive.mixing import mochi_negatives
from cssl.contrastive.pools import QueuePool
from cssl.contrastive.selection import NegativeSelector, detect_false_negatives, hardness, ring_mask

__all__ = [
    "AdversarialBank",
    "ESTIMATORS",
    "NegativeSelector",
    "QueuePool",
    "adversarial_similarities",
    "bank_loss_and_gradient",
    "check_estimator",
    "detect_false_negatives",
    "hardness",
    "in_batch_similarities",
    "info_nce",
    "info_nce_per_anchor",
    "mochi_negatives",
    "nt_xent",
    "ring_mask",
]
