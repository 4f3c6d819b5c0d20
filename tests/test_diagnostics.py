import math

import pytest
import torch

from cssl.contrastive import nt_xent
from cssl.contrastive.diagnostics import (
    alignment,
    false_negative_rate,
    floor_fraction,
    importance_spread,
    importance_weights,
    negative_stats,
    uniformity,
)
from cssl.contrastive.losses import in_batch_similarities


def test_effective_number_of_uniform_negatives_is_n():
    pos = torch.tensor([0.9, 0.8])
    neg = torch.full((2, 7), 0.3)
    stats = negative_stats(pos, neg, 0.1)
    assert stats["neg/effective_negatives"].item() == pytest.approx(7.0)
    assert stats["neg/neg_sim_mean"].item() == pytest.approx(0.3)
    assert stats["neg/neg_sim_std"].item() == pytest.approx(0.0, abs=1e-7)
    assert stats["neg/pos_sim_mean"].item() == pytest.approx(0.85)


def test_hand_computed_stats_with_a_mask():
    pos = torch.tensor([1.0, 0.0])
    neg = torch.tensor([[0.5, -0.5, 0.9, 0.1], [0.2, 0.4, 0.0, 0.6]])
    mask = torch.tensor([[True, True, False, True], [True, True, True, True]])  # 0.9 is not a negative
    stats = negative_stats(pos, neg, 1.0, mask, top_k=2)
    real = torch.tensor([0.5, -0.5, 0.1, 0.2, 0.4, 0.0, 0.6], dtype=torch.float64)
    assert stats["neg/neg_sim_mean"].item() == pytest.approx(real.mean().item(), rel=1e-6)
    assert stats["neg/neg_sim_std"].item() == pytest.approx(real.std().item(), rel=1e-6)
    assert stats["neg/neg_sim_max"].item() == pytest.approx((0.5 + 0.6) / 2, rel=1e-6)
    assert stats["neg/hardness"].item() == pytest.approx(((0.5 + 0.1) / 2 + (0.6 + 0.4) / 2) / 2, rel=1e-6)
    # effective number of row 0: exp(entropy) of softmax([0.5, -0.5, 0.1])
    p = torch.softmax(torch.tensor([0.5, -0.5, 0.1], dtype=torch.float64), 0)
    e0 = math.exp(-(p * p.log()).sum().item())
    p = torch.softmax(torch.tensor([0.2, 0.4, 0.0, 0.6], dtype=torch.float64), 0)
    e1 = math.exp(-(p * p.log()).sum().item())
    assert stats["neg/effective_negatives"].item() == pytest.approx((e0 + e1) / 2, rel=1e-6)


def test_one_dominant_negative_gives_an_effective_number_near_one():
    neg = torch.tensor([[0.99, -1.0, -1.0, -1.0]])
    assert negative_stats(torch.zeros(1), neg, 0.05)["neg/effective_negatives"].item() == pytest.approx(1.0, abs=1e-6)


def test_floor_fraction_matches_the_methods_md_vector():
    # METHODS.md: with tau_plus 0.1 anchors U2 and V2 are clamped (2 of 6)
    u = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0]])
    v = torch.tensor([[1.0, 1.0], [0.0, 2.0], [-1.0, -1.0]])
    pos, sim, mask = in_batch_similarities(u, v)
    assert floor_fraction(
        pos, sim, 0.5, estimator="dcl", tau_plus=0.1, beta=0.0, neg_mask=mask
    ).item() == pytest.approx(2 / 6)
    assert floor_fraction(pos, sim, 0.5, estimator="infonce", tau_plus=0.0, beta=0.0, neg_mask=mask).item() == 0.0
    assert nt_xent(u, v, 0.5, estimator="dcl", tau_plus=0.1).item() == pytest.approx(1.038401, abs=1e-6)


def test_importance_weights_are_normalised_by_their_mean():
    neg = torch.tensor([[0.0, 0.5, 1.0]])
    w = importance_weights(neg, 0.5, 1.0)
    raw = torch.exp(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64))
    assert torch.allclose(w[0], raw / raw.mean())
    spread = importance_spread(neg, 0.5, 1.0)
    assert spread["neg/hcl_weight_max"].item() == pytest.approx((raw.max() / raw.mean()).item(), rel=1e-6)
    assert importance_spread(neg, 0.5, 0.0)["neg/hcl_weight_std"].item() == pytest.approx(0.0)


def test_alignment_and_uniformity_against_hand_values():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert alignment(z1, z2).item() == pytest.approx((2.0 + 0.0) / 2)  # |e1 - e2|^2 = 2
    # two opposite points: one pair at squared distance 4
    assert uniformity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])).item() == pytest.approx(-8.0)
    # collapsed points are the least uniform: log E exp(0) = 0
    assert uniformity(torch.ones(5, 3)).item() == pytest.approx(0.0, abs=1e-6)


def test_false_negative_rate_of_a_constructed_batch():
    # angles: 0 at 0.0 deg, 1 at 5.8, 2 at 7.0, 5 at 6.5 (a class-1 point inside class 0), 3 at 90, 4 at 84.2
    feats = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.98, 0.12], [0.0, 1.0], [0.1, 0.99], [0.97, 0.11]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    # nearest other point: 0->1 same, 1->5 other, 2->5 other, 3->4 same, 4->3 same, 5->2 other
    assert false_negative_rate(feats, labels, k=1).item() == pytest.approx(3 / 6)
    # k = 2: 0->{1,5}, 1->{5,2}, 2->{5,1}, 3->{4,2}, 4->{3,2}: one of two each; 5->{2,1}: none
    assert false_negative_rate(feats, labels, k=2).item() == pytest.approx((0.5 * 5 + 0.0) / 6)
    # perfectly separated classes: every hardest negative is a false negative
    sep = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    assert false_negative_rate(sep, torch.tensor([0, 0, 1, 1]), k=1).item() == 1.0
