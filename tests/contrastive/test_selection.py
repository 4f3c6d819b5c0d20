"""Negative selection (FNC, ring), the hardness curriculum and empty rows: the float64 test vectors of
NEGATIVES.md (sections 1.8, 2.5, 4.3), and independent loop formulations of each transform."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cssl.contrastive import info_nce, info_nce_per_anchor
from cssl.contrastive.selection import (
    NegativeSelector,
    detect_false_negatives,
    ease,
    fnc_diagnostics,
    hardness,
    ring_diagnostics,
    ring_mask,
    support_scores,
    top_ranked,
)
from cssl.core.errors import ConfigError

D = torch.float64
T = 0.5
Z1 = [[1.00, 0.20, 0.00, 0.10], [0.80, 0.50, 0.20, 0.00], [0.00, 0.30, 1.00, 0.40]]
Z2 = [[0.90, 0.40, 0.10, 0.00], [0.70, 0.30, 0.40, 0.20], [0.10, 0.00, 0.90, 0.60]]
SUP = [
    [[0.60, 0.80, 0.10, 0.00], [0.90, 0.00, 0.40, 0.30]],
    [[0.50, 0.60, 0.00, 0.50], [1.00, 0.10, 0.10, 0.00]],
    [[0.00, 0.50, 0.80, 0.00], [0.70, 0.40, 0.30, 0.10]],
]
Q = [[1.00, 0.00, 0.30, 0.00], [0.00, 1.00, 0.00, 0.50]]
KEYS = [[0.90, 0.20, 0.20, 0.10], [0.10, 0.80, 0.30, 0.40]]
QUEUE = [
    [0.95, 0.10, 0.20, 0.00],
    [0.30, 0.90, 0.10, 0.20],
    [0.00, 0.10, 1.00, 0.00],
    [0.50, 0.50, 0.50, 0.50],
    [-0.20, 0.70, 0.00, 0.70],
    [0.80, -0.30, 0.40, 0.10],
    [0.10, 0.20, -0.90, 0.30],
    [-0.60, -0.40, 0.20, 0.60],
    [0.40, 0.60, -0.20, -0.60],
    [0.00, -0.80, 0.30, -0.50],
]
SUPK = [[[0.80, 0.00, 0.60, 0.00], [1.00, 0.30, 0.00, 0.20]], [[0.20, 0.90, 0.00, 0.30], [0.00, 0.60, 0.60, 0.60]]]


def unit(x) -> torch.Tensor:
    return F.normalize(torch.tensor(x, dtype=D), dim=-1)


def simclr_frame():
    """The SimCLR frame of 1.8: pos (6,), sim (6, 6) over global columns, mask (6, 6), support (3, 4, 4)."""
    z = torch.cat([unit(Z1), unit(Z2)])  # (6, D)
    sim = z @ z.T
    rows = torch.arange(6)
    partner = (rows + 3) % 6
    mask = torch.ones(6, 6, dtype=torch.bool)
    mask[rows, rows] = False
    mask[rows, partner] = False
    support = torch.cat([torch.stack([unit(Z1), unit(Z2)], 1), torch.tensor(SUP, dtype=D)], 1)  # (3, 4, D)
    return sim[rows, partner], sim, mask, z, support


def moco_frame():
    q, k, queue = unit(Q), unit(KEYS), unit(QUEUE)
    support = torch.cat([k[:, None], torch.tensor(SUPK, dtype=D)], 1)  # (2, 3, D)
    return (q * k).sum(1), q @ queue.T, queue, support


def columns(m: torch.Tensor) -> list[list[int]]:
    return [row.nonzero().flatten().tolist() for row in m]


# -- independent loop formulations ------------------------------------------------------------------
def loop_detect(support, candidates, mask, image_of_row, k, theta, agg="max"):
    """F per row: real columns sorted by (-score, index), the first k, those with score > theta."""
    u = np.asarray(F.normalize(support, dim=-1))
    c = np.asarray(F.normalize(candidates, dim=-1))
    out = np.zeros(tuple(mask.shape), dtype=bool)
    for a, g in enumerate(image_of_row):
        real = [j for j in range(c.shape[0]) if mask[a, j]]
        score = {
            j: (max if agg == "max" else np.mean)([float(u[g, v] @ c[j]) for v in range(u.shape[1])]) for j in real
        }
        ranked = sorted(real, key=lambda j: (-score[j], j))
        for j in ranked[: (len(ranked) if k is None else k)]:
            out[a, j] = theta is None or score[j] > theta
    return torch.from_numpy(out)


def loop_ring(sim, mask, o, i):
    """The official ring (RING moco.py:111-145): sort descending, int(o*n) outer, int(i*outer) inner."""
    out = torch.zeros_like(mask)
    for a in range(sim.shape[0]):
        real = [j for j in range(sim.shape[1]) if mask[a, j]]
        ranked = sorted(real, key=lambda j: (-float(sim[a, j]), j))
        outer = int(o * len(real))
        inner = int(i * outer)
        for j in ranked[inner:outer]:
            out[a, j] = True
    return out


def loop_loss(pos, sim, mask, extra, estimator="infonce", tau_plus=0.0, beta=0.0):
    """Per-anchor loss in linear space: Z = e^{p/t} + sum_F e^{s/t} + Ng(mask & ~F), averaged over P = {+} u F."""
    losses = []
    for a in range(sim.shape[0]):
        p = float(pos[a])
        f = [float(sim[a, j]) for j in range(sim.shape[1]) if extra is not None and extra[a, j]]
        negs = np.array(
            [float(sim[a, j]) for j in range(sim.shape[1]) if mask[a, j] and not (extra is not None and extra[a, j])]
        )
        e = np.exp(negs / T)
        n = len(negs)
        if n == 0:
            ng = 0.0
        elif estimator == "infonce":
            ng = e.sum()
        else:
            imp = np.exp(beta * negs / T) if estimator == "hcl" else np.ones(n)
            ng = max(
                ((imp * e).sum() / imp.mean() - tau_plus * n * math.exp(p / T)) / (1 - tau_plus), n * math.exp(-1 / T)
            )
        z = math.exp(p / T) + sum(math.exp(s / T) for s in f) + ng
        losses.append(np.mean([-(s / T - math.log(z)) for s in [p, *f]]))
    return np.array(losses)


# -- FNC: the vectors of NEGATIVES.md 1.8 -------------------------------------------------------------
def test_plain_frames_match_the_spec():
    pos, sim, mask, _, _ = simclr_frame()
    assert info_nce(pos, sim, T, neg_mask=mask).item() == pytest.approx(1.084985, abs=1e-6)
    assert pos[:3].tolist() == pytest.approx([0.966092, 0.927552, 0.938661], abs=1e-6)
    assert sim[0, [1, 2, 4, 5]].tolist() == pytest.approx([0.910765, 0.087287, 0.861892, 0.143742], abs=1e-6)
    mpos, mneg, _, _ = moco_frame()
    assert info_nce(mpos, mneg, T).item() == pytest.approx(1.544343, abs=1e-6)


@pytest.mark.parametrize(
    "name, options, views, detected, frac, elim, att",
    [
        ("F1", {"top_k": 2, "threshold": 0.8}, 4, [[1, 4], [0, 3], [1, 4], [1, 4], [0, 3], [1, 4]], 0.5, 0.413868, 1.338777),
        ("F1-mean", {"top_k": 2, "threshold": 0.8, "aggregation": "mean"}, 4, [[1, 4], [0, 3], [], [1, 4], [0, 3], []], 1 / 3, 0.556573, 1.113079),
        ("F1-thr", {"top_k": 3, "threshold": 0.95}, 4, [[1], [0, 3], [1, 3, 4], [1], [0, 3], [1, 3, 4]], 0.5, 0.515677, 1.391803),
        ("F1-S0", {"top_k": 2, "threshold": 0.8}, 2, [[1, 4], [0, 3], [], [1, 4], [0, 3], []], 1 / 3, 0.556573, 1.113079),
        ("F3-edge", {"top_k": 100, "threshold": -2.0}, 4, None, 1.0, 0.0, 1.798026),
    ],
)  # fmt: skip
def test_fnc_on_the_in_batch_pool(name, options, views, detected, frac, elim, att):
    pos, sim, mask, z, support = simclr_frame()
    image = torch.arange(6) % 3
    found = detect_false_negatives(support[:, :views], z, mask, image_of_row=image, **options)
    if detected is None:
        assert torch.equal(found, mask)
    else:
        assert columns(found) == detected
    k, theta = options["top_k"], options["threshold"]
    assert torch.equal(
        found, loop_detect(support[:, :views], z, mask, image.tolist(), k, theta, options.get("aggregation", "max"))
    )
    assert fnc_diagnostics(found, mask)["neg/fnc_cancelled"].item() == pytest.approx(frac, abs=1e-6)
    eliminated = info_nce_per_anchor(pos, sim, T, neg_mask=mask & ~found)
    attracted = info_nce_per_anchor(pos, sim, T, neg_mask=mask & ~found, extra_pos=found)
    assert eliminated.mean().item() == pytest.approx(elim, abs=1e-6)
    assert attracted.mean().item() == pytest.approx(att, abs=1e-6)
    np.testing.assert_allclose(attracted.numpy(), loop_loss(pos, sim, mask, found), atol=1e-12)
    if name == "F1":
        rows = [0.311541, 0.442389, 0.343498, 0.349214, 0.687465, 0.349102]
        assert eliminated.tolist() == pytest.approx(rows, abs=1e-6)
        rows = [1.228894, 1.266312, 1.433336, 1.234748, 1.399689, 1.469680]
        assert attracted.tolist() == pytest.approx(rows, abs=1e-6)
        scores = support_scores(support, z)  # (3, 6)
        assert scores[0, [1, 2, 4, 5]].tolist() == pytest.approx([0.984631, 0.451747, 0.934800, 0.563309], abs=1e-6)
        assert scores[2, [0, 1, 3, 4]].tolist() == pytest.approx([0.890229, 0.981842, 0.956467, 0.980581], abs=1e-6)
    if name == "F3-edge":
        assert eliminated.tolist() == [0.0] * 6  # exactly
        rows = [1.866815, 1.789974, 1.809723, 1.849432, 1.657608, 1.814601]
        assert attracted.tolist() == pytest.approx(rows, abs=1e-6)


@pytest.mark.parametrize(
    "real, detected, frac, elim, att, rows",
    [
        (10, [[0, 5], [1, 3]], 0.2, 1.074577, 1.649523, ([1.006402, 1.142752], [1.560489, 1.738557])),
        (5, [[0, 3], [1, 3]], 0.4, 0.668562, 1.461260, None),
    ],
)
def test_fnc_on_the_queue(real, detected, frac, elim, att, rows):
    pos, neg, queue, support = moco_frame()
    mask = (torch.arange(10) < real).expand(2, 10)
    found = detect_false_negatives(support, queue, mask, top_k=2, threshold=0.7)
    assert columns(found) == detected
    assert torch.equal(found, loop_detect(support, queue, mask, [0, 1], 2, 0.7))
    if real == 10:
        expected = [0.988251, 0.588747, 0.597022, 0.737865, 0.139718, 0.927601, 0.212335, -0.375326, 0.451154, 0.181827]
        assert support_scores(support, queue)[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert fnc_diagnostics(found, mask)["neg/fnc_cancelled"].item() == pytest.approx(frac, abs=1e-6)
    eliminated = info_nce_per_anchor(pos, neg, T, neg_mask=mask & ~found)
    attracted = info_nce_per_anchor(pos, neg, T, neg_mask=mask & ~found, extra_pos=found)
    assert eliminated.mean().item() == pytest.approx(elim, abs=1e-6)
    assert attracted.mean().item() == pytest.approx(att, abs=1e-6)
    if rows:
        assert eliminated.tolist() == pytest.approx(rows[0], abs=1e-6)
        assert attracted.tolist() == pytest.approx(rows[1], abs=1e-6)


@pytest.mark.parametrize("estimator, options", [("dcl", {"tau_plus": 0.1}), ("hcl", {"tau_plus": 0.1, "beta": 1.0})])
def test_attraction_with_a_debiased_estimator_matches_the_loop(estimator, options):
    pos, sim, mask, z, support = simclr_frame()
    found = detect_false_negatives(support, z, mask, image_of_row=torch.arange(6) % 3, top_k=2, threshold=0.8)
    got = info_nce_per_anchor(pos, sim, T, estimator=estimator, neg_mask=mask & ~found, extra_pos=found, **options)
    np.testing.assert_allclose(got.numpy(), loop_loss(pos, sim, mask, found, estimator, **options), atol=1e-12)


def test_top_ranked_breaks_ties_to_the_lower_index_and_clips_k():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1], [0.3, 0.3, 0.3, 0.3, 0.3]])
    mask = torch.tensor([[True, True, False, True, True], [True, False, True, True, True]])
    assert columns(top_ranked(scores, mask, 2)) == [[0, 1], [0, 2]]  # column 2 of row 0 is not real
    assert columns(top_ranked(scores, mask, torch.tensor([3, 9]))) == [[0, 1, 3], [0, 2, 3, 4]]
    assert columns(top_ranked(scores, mask, 0)) == [[], []]
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (20, 15), generator=g).double()  # many ties
    mask = torch.rand(20, 15, generator=g) > 0.3
    k = torch.randint(0, 16, (20,), generator=g)
    got = top_ranked(scores, mask, k)
    for a in range(20):
        real = sorted((j for j in range(15) if mask[a, j]), key=lambda j: (-float(scores[a, j]), j))
        assert columns(got[a : a + 1])[0] == sorted(real[: int(k[a])])
    # the complement path (the n - k lowest, dropped) selects the same columns
    rest = (mask.sum(1) - torch.minimum(k, mask.sum(1))).max().item()
    assert torch.equal(top_ranked(scores, mask, k, max_rest=rest), got)


# -- ring: the vectors of NEGATIVES.md 2.5 -----------------------------------------------------------------
@pytest.mark.parametrize(
    "o, i, real, kept, loss",
    [
        (0.5, 0.2, 10, [[1, 3, 5, 8], [1, 3, 6, 8]], 1.109530),
        (1.0, 0.1, 10, [[1, 2, 3, 4, 5, 6, 7, 8, 9], [0, 1, 2, 3, 5, 6, 7, 8, 9]], 1.301599),
        (0.1, 0.1, 10, [[0], [4]], 0.697843),
        (0.5, 0.2, 5, [[0, 3], [1, 4]], 1.003761),
    ],
)
def test_ring_on_the_queue(o, i, real, kept, loss):
    pos, neg, _, _ = moco_frame()
    mask = (torch.arange(10) < real).expand(2, 10)
    ring = ring_mask(neg, mask, o, i)
    assert columns(ring) == kept
    assert torch.equal(ring, loop_ring(neg, mask, o, i))
    assert info_nce(pos, neg, T, neg_mask=ring).item() == pytest.approx(loss, abs=1e-6)


@pytest.mark.parametrize(
    "o, i, kept, loss",
    [
        (0.75, 0.34, [[4, 5], [0, 2], [1, 3], [2, 4], [0, 2], [1, 3]], 0.653351),
        (1.0, 0.1, [[1, 2, 4, 5], [0, 2, 3, 5], [0, 1, 3, 4], [1, 2, 4, 5], [0, 2, 3, 5], [0, 1, 3, 4]], 1.084985),
        (0.1, 0.1, [[]] * 6, 0.0),
    ],
)
def test_ring_on_the_in_batch_pool(o, i, kept, loss):
    pos, sim, mask, _, _ = simclr_frame()
    ring = ring_mask(sim, mask, o, i)
    assert columns(ring) == kept
    got = info_nce_per_anchor(pos, sim, T, neg_mask=ring)
    assert got.mean().item() == pytest.approx(loss, abs=1e-6)
    if loss == 0:
        assert got.tolist() == [0.0] * 6  # exactly
    logs = ring_diagnostics(ring, mask)
    assert logs["neg/ring_kept"].item() == pytest.approx(ring.sum().item() / 24)
    assert logs["neg/ring_empty"].item() == (1.0 if loss == 0 else 0.0)


def test_ring_floors_are_the_official_float_floors():
    g = torch.Generator().manual_seed(1)
    sim = torch.rand(8, 100, generator=g, dtype=D)
    mask = torch.ones(8, 100, dtype=torch.bool)
    mask[:, 71:] = torch.rand(8, 29, generator=g) > 0.5
    for o, i in ((0.29, 0.1), (0.57, 0.33), (1.0, 0.0), (0.05, 0.9)):
        assert torch.equal(ring_mask(sim, mask, o, i), loop_ring(sim, mask, o, i)), (o, i)
    assert ring_mask(sim, torch.ones_like(mask), 0.29, 0.0).sum(1).tolist() == [int(0.29 * 100)] * 8  # 28


# -- the curriculum: NEGATIVES.md 4.3 ----------------------------------------------------------------------
def test_curriculum_values():
    points = (0, 0.1, 0.25, 0.5, 0.75, 1)
    assert [hardness(p) for p in points] == pytest.approx([0, 0.2, 0.5, 1, 1, 1])
    root = [0, 0.316228, 0.5, 0.707107, 0.866025, 1]
    assert [hardness(p, "sqrt", 1.0) for p in points] == pytest.approx(root, abs=1e-6)
    assert hardness(-0.3) == 0 and hardness(7.0) == 1
    assert [hardness(p, "none") for p in points] == [1.0] * 6
    # the ring's outer fraction from 1.0 down to 0.1: percentile windows [100(1-o), 100(1-0.1 o))
    outer = [ease(1.0, 0.1, hardness(p)) for p in (0, 0.1, 0.25, 0.5, 0.9)]
    assert outer == pytest.approx([1.0, 0.82, 0.55, 0.1, 0.1])
    assert [100 * (1 - 0.1 * o) for o in outer[:3]] == pytest.approx([90, 91.8, 94.5])


@pytest.mark.parametrize("p, beta, loss", [(0, 0.0, 0.998380), (0.25, 0.5, 1.105116), (0.5, 1.0, 1.185473)])
def test_curriculum_drives_hcl_beta(p, beta, loss):
    pos, sim, mask, _, _ = simclr_frame()
    b = ease(0.0, 1.0, hardness(p))
    assert b == beta
    assert info_nce(pos, sim, T, estimator="hcl", tau_plus=0.1, beta=b, neg_mask=mask).item() == pytest.approx(
        loss, abs=1e-6
    )
    assert info_nce(pos, sim, T, estimator="hcl", tau_plus=0.0, beta=0.0, neg_mask=mask).item() == pytest.approx(
        1.084985, abs=1e-6
    )


# -- empty rows: 0 loss and finite gradients with every estimator ---------------------------------------
@pytest.mark.parametrize(
    "estimator, options",
    [
        ("infonce", {}),
        ("dcl", {"tau_plus": 0.0}),
        ("dcl", {"tau_plus": 0.1}),
        ("hcl", {"tau_plus": 0.0, "beta": 1.0}),
        ("hcl", {"tau_plus": 0.1, "beta": 1.0}),
        ("hcl", {"tau_plus": 0.5, "beta": 0.5}),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_without_negatives_give_zero_loss_and_finite_gradients(estimator, options, dtype):
    pos_v, sim_v, mask, _, _ = simclr_frame()
    pos = pos_v.to(dtype).clone().requires_grad_()
    sim = sim_v.to(dtype).clone().requires_grad_()
    cut = mask.clone()
    cut[[1, 4]] = False  # everything cancelled in two rows (e.g. FNC elimination), an empty ring alike
    losses = info_nce_per_anchor(pos, sim, T, estimator=estimator, neg_mask=cut, **options)
    assert losses[[1, 4]].tolist() == [0.0, 0.0]
    losses.mean().backward()
    assert torch.isfinite(pos.grad).all() and torch.isfinite(sim.grad).all()
    assert pos.grad[[1, 4]].tolist() == [0.0, 0.0] and sim.grad[[1, 4]].abs().sum() == 0
    # the other rows are untouched, and the empty ones count in the mean as 0
    keep = [0, 2, 3, 5]
    full = info_nce_per_anchor(pos_v, sim_v, T, estimator=estimator, neg_mask=mask, **options)
    torch.testing.assert_close(losses[keep].double(), full[keep], rtol=1e-6, atol=1e-7)
    assert losses.mean().item() == pytest.approx(full[keep].sum().item() / 6, rel=1e-6)
    # every row empty, and a frame with no column at all
    for neg, m in ((sim, torch.zeros_like(mask)), (sim[:, :0], None)):
        out = info_nce(pos, neg, T, estimator=estimator, neg_mask=m, **options)
        assert out.item() == 0.0
        pos.grad = None
        out.backward()
        assert torch.isfinite(pos.grad).all()
    # attraction in a row whose negatives were all cancelled: finite, positive, equal to the loop
    found = mask.clone()
    found[[0, 2, 3, 5]] = False
    att = info_nce_per_anchor(pos_v, sim_v, T, estimator=estimator, neg_mask=mask & ~found, extra_pos=found, **options)
    np.testing.assert_allclose(att.numpy(), loop_loss(pos_v, sim_v, mask, found, estimator, **options), atol=1e-12)


# -- the selector: order, diagnostics, validation ------------------------------------------------------------
def test_selector_applies_fnc_then_the_ring_with_diagnostics():
    pos, sim, mask, z, support = simclr_frame()
    image = torch.arange(6) % 3
    selector = NegativeSelector(fnc="attract", fnc_top_k=2, fnc_threshold=0.8, ring_outer=1.0, ring_inner=0.5)
    labels = torch.tensor([0, 1, 0, 0, 1, 0])  # rows: images 0, 1, 2 in both views
    candidate_labels = torch.tensor([0, 1, -1, 0, 1, -1])
    sel = selector.select(
        sim, mask, support=support, candidates=z, image_of_row=image, labels=labels,
        candidate_labels=candidate_labels, diagnose=True,
    )  # fmt: skip
    found = detect_false_negatives(support, z, mask, image_of_row=image, top_k=2, threshold=0.8)
    assert torch.equal(sel.extra_pos, found)
    assert torch.equal(sel.mask, loop_ring(sim, mask & ~found, 1.0, 0.5))  # the ring ranks the survivors
    assert not (sel.mask & sel.extra_pos).any()
    assert sel.logs["neg/fnc_cancelled"].item() == pytest.approx(0.5)
    # labelled detections: rows 0, 3 (label 0) -> columns 1 (1), 4 (1); rows 1, 4 (label 1) -> 0 (0), 3 (0);
    # rows 2, 5 (label 0) -> 1 (1), 4 (1): 12 known pairs, none of the same class
    assert sel.logs["neg/fnc_precision"].item() == 0.0
    same = selector.select(sim, mask, support=support, candidates=z, image_of_row=image, labels=torch.zeros(6, dtype=torch.long),
                           candidate_labels=torch.zeros(6, dtype=torch.long), diagnose=True)  # fmt: skip
    assert same.logs["neg/fnc_precision"].item() == 1.0
    assert set(sel.logs) == {"neg/fnc_cancelled", "neg/fnc_precision", "neg/ring_kept", "neg/ring_empty"}
    eliminate = NegativeSelector(fnc="eliminate", fnc_top_k=2, fnc_threshold=0.8)
    sel = eliminate.select(sim, mask, support=support, candidates=z, image_of_row=image)
    assert sel.extra_pos is None and torch.equal(sel.mask, mask & ~found) and sel.logs == {}
    assert NegativeSelector().select(sim, mask).mask is mask and not NegativeSelector().active


def test_selector_warns_once_when_every_ring_is_empty():
    _, sim, mask, _, _ = simclr_frame()
    selector = NegativeSelector(ring_outer=0.1)
    with pytest.warns(UserWarning, match="every ring is empty"):
        selector.select(sim, mask)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        selector.select(sim, mask)


@pytest.mark.parametrize(
    "options, key",
    [
        ({"fnc": "cancel"}, "method.fnc"),
        ({"fnc": "eliminate", "fnc_top_k": 0}, "method.fnc_top_k"),
        ({"fnc": "eliminate", "fnc_threshold": 2.0}, "method.fnc_threshold"),
        ({"fnc_support_views": -1}, "method.fnc_support_views"),
        ({"fnc_aggregation": "min"}, "method.fnc_aggregation"),
        ({"ring_outer": 0.0}, "method.ring_outer"),
        ({"ring_outer": 0.5, "ring_inner": 1.0}, "method.ring_inner"),
    ],
)
def test_selector_rejects_bad_values_naming_the_key(options, key):
    with pytest.raises(ConfigError, match=key):
        NegativeSelector(**options)
