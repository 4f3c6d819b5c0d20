import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cssl.contrastive import info_nce, mochi_negatives
from cssl.contrastive.estimators import info_nce_per_anchor
from cssl.contrastive.mixing import hardest_indices, mix_hard_negatives

# METHODS.md vector: second queue, N = 3, s = 2, s' = 1, t = 0.2
Q = F.normalize(torch.tensor([[1.0, 2], [2, -1]], dtype=torch.float64), dim=1)
K = F.normalize(torch.tensor([[1.0, 1], [1, -1]], dtype=torch.float64), dim=1)
QUEUE = torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0.8, -0.6], [0.28, 0.96]], dtype=torch.float64)


def test_methods_vector_with_fixed_draws():
    hard = hardest_indices(Q, QUEUE, 3)
    # q0 . queue = (.447, .894, -.447, -.179, .984); q1 . queue = (.894, -.447, -.894, .984, -.179)
    assert hard.tolist() == [[4, 1, 0], [3, 0, 4]]
    pair_i = torch.tensor([[0, 0], [0, 1]])
    pair_j = torch.tensor([[1, 2], [1, 2]])
    alpha = torch.tensor([[0.5, 0.25], [0.5, 0.75]], dtype=torch.float64)
    query_j = torch.tensor([[0], [2]])
    beta = torch.tensor([[0.3], [0.1]], dtype=torch.float64)
    synthetic = mix_hard_negatives(Q, QUEUE, hard, pair_i, pair_j, alpha, query_j, beta)  # (2, 3, 2)
    assert synthetic.shape == (2, 3, 2)
    pos = (Q * K).sum(1)
    neg = torch.cat([Q @ QUEUE.T, torch.einsum("bd,bsd->bs", Q, synthetic)], dim=1)
    assert info_nce(pos, neg, 0.2).item() == pytest.approx(1.612264, abs=1e-6)
    per_query = info_nce_per_anchor(pos, neg, 0.2)
    assert per_query.tolist() == pytest.approx([1.712819, 1.511708], abs=1e-6)


def _reference_mix(q, negatives, n_hard, pair_i, pair_j, alpha, query_j, beta):
    """Loops over queries in float64 NumPy: sort this query's similarities, then mix by rank."""
    q, negatives = np.asarray(q, np.float64), np.asarray(negatives, np.float64)
    out = []
    for b in range(q.shape[0]):
        order = np.argsort(-(negatives @ q[b]), kind="stable")[:n_hard]
        rows = []
        for i, j, a in zip(pair_i[b], pair_j[b], alpha[b], strict=True):
            h = a * negatives[order[i]] + (1 - a) * negatives[order[j]]
            rows.append(h / np.linalg.norm(h))
        for j, w in zip(query_j[b], beta[b], strict=True):
            h = w * q[b] + (1 - w) * negatives[order[j]]
            rows.append(h / np.linalg.norm(h))
        out.append(rows)
    return np.array(out)


def test_matches_a_per_query_reference():
    g = torch.Generator().manual_seed(1)
    b, k, d, n, s, sp = 5, 40, 6, 7, 4, 3
    q = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    negatives = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    pair_i, pair_j = torch.randint(n, (b, s), generator=g), torch.randint(n, (b, s), generator=g)
    query_j = torch.randint(n, (b, sp), generator=g)
    alpha, beta = (
        torch.rand(b, s, generator=g, dtype=torch.float64),
        0.5 * torch.rand(b, sp, generator=g, dtype=torch.float64),
    )
    got = mix_hard_negatives(q, negatives, hardest_indices(q, negatives, n), pair_i, pair_j, alpha, query_j, beta)
    expected = _reference_mix(
        q, negatives, n, pair_i.numpy(), pair_j.numpy(), alpha.numpy(), query_j.numpy(), beta.numpy()
    )
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)


def test_each_query_mixes_its_own_hardest_negatives():
    # query 0 = e0 with its hard negatives in span(e0, e1); query 1 = e2 with its hard negatives in span(e2, e3).
    # Mixing query 0's negatives for query 1 (the flattened-index port bug) would put mass on e0/e1.
    g = torch.Generator().manual_seed(0)
    q = torch.eye(4)[[0, 2]]  # (2, 4)
    near0 = torch.cat([torch.ones(6, 1), torch.rand(6, 1, generator=g), torch.zeros(6, 2)], dim=1)
    near2 = torch.cat([torch.zeros(6, 2), torch.ones(6, 1), torch.rand(6, 1, generator=g)], dim=1)
    negatives = F.normalize(torch.cat([near0, near2]), dim=1)  # (12, 4)
    out = mochi_negatives(q, negatives, n_hard=6, s=20, s_prime=10, generator=g)  # (2, 30, 4)
    assert out[0, :, 2:].abs().max() == 0 and out[1, :, :2].abs().max() == 0
    assert (out[0, :, 0] > 0).all() and (out[1, :, 2] > 0).all()


def test_unit_norm_no_gradient_and_reproducible():
    q = torch.randn(4, 8, requires_grad=True)
    negatives = F.normalize(torch.randn(30, 8), dim=1)
    out = mochi_negatives(q, negatives, n_hard=5, s=6, s_prime=3, generator=torch.Generator().manual_seed(3))
    assert out.shape == (4, 9, 8)
    assert torch.allclose(out.norm(dim=2), torch.ones(4, 9))
    assert not out.requires_grad and out.grad_fn is None
    again = mochi_negatives(q, negatives, n_hard=5, s=6, s_prime=3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, again)
    # the logits q . h do carry gradient to q (only h is constant)
    (q @ out[0].T).sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_query_mixes_are_never_easier_than_the_nth_hardest():
    # Guaranteed for h' = normalize(beta q + (1-beta) n_j): it lies on the arc from n_j to q, so q.h' >= q.n_j.
    g = torch.Generator().manual_seed(5)
    q = F.normalize(torch.randn(16, 5, generator=g), dim=1)
    negatives = F.normalize(torch.randn(200, 5, generator=g), dim=1)
    n_hard = 150  # deep enough that many of the hardest have negative similarity
    nth = (q @ negatives.T).topk(n_hard, dim=1).values[:, -1]  # (B,)
    assert (nth < 0).all()
    out = mochi_negatives(q, negatives, n_hard=n_hard, s=0, s_prime=64, generator=g)
    sim = torch.einsum("bd,bsd->bs", q, out)
    assert (sim >= nth[:, None] - 1e-6).all()


def test_negative_mixes_are_not_easier_when_the_hardest_are_positive():
    # For h = normalize(alpha n_i + (1-alpha) n_j) the bound q.h >= q.n_(N) needs non-negative similarities.
    g = torch.Generator().manual_seed(6)
    q = F.normalize(torch.randn(8, 16, generator=g), dim=1)
    negatives = F.normalize(torch.randn(500, 16, generator=g), dim=1)
    n_hard = 20
    nth = (q @ negatives.T).topk(n_hard, dim=1).values[:, -1]
    assert (nth > 0).all()
    out = mochi_negatives(q, negatives, n_hard=n_hard, s=64, s_prime=0, generator=g)
    sim = torch.einsum("bd,bsd->bs", q, out)
    assert (sim >= nth[:, None] - 1e-6).all()


def test_negative_mixes_can_be_easier_when_similarities_are_negative():
    # Two nearly opposite negatives, each slightly below zero: their mix points away from q.
    q = torch.tensor([[1.0, 0.0]])
    negatives = F.normalize(torch.tensor([[-0.01, 1.0], [-0.01, -1.0]]), dim=1)
    hard = hardest_indices(q, negatives, 2)
    h = mix_hard_negatives(
        q, negatives, hard, torch.tensor([[0]]), torch.tensor([[1]]), torch.tensor([[0.5]]),
        torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0),
    )  # fmt: skip
    assert (q @ negatives.T).min() > -0.02 and (q @ h[0].T).item() == pytest.approx(-1.0)


def test_nothing_to_mix():
    out = mochi_negatives(torch.randn(3, 4), F.normalize(torch.randn(10, 4), dim=1), n_hard=2, s=0, s_prime=0)
    assert out.shape == (3, 0, 4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_hard": 11}, "n_hard"),
        ({"n_hard": 0}, "n_hard"),
        ({"s": -1}, "s and s_prime"),
        ({"s_prime": -2}, "s and s_prime"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"n_hard": 3, "s": 2, "s_prime": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        mochi_negatives(torch.randn(2, 4), F.normalize(torch.randn(10, 4), dim=1), **args)


def test_precomputed_similarities_give_the_same_negatives():
    g = torch.Generator().manual_seed(11)
    q = F.normalize(torch.randn(4, 6, generator=g), dim=1)
    negatives = F.normalize(torch.randn(20, 6, generator=g), dim=1)
    plain = mochi_negatives(q, negatives, n_hard=5, s=3, s_prime=2, generator=torch.Generator().manual_seed(1))
    given = mochi_negatives(
        q, negatives, n_hard=5, s=3, s_prime=2, generator=torch.Generator().manual_seed(1), sim=q @ negatives.T
    )
    assert torch.equal(plain, given)
    with pytest.raises(ValueError, match="sim"):
        mochi_negatives(q, negatives, n_hard=5, s=3, s_prime=2, sim=torch.zeros(4, 3))
