import numpy as np
import pytest
import torch

from cssl.eval.knn import knn_predict


def test_weighted_vote_on_a_constructed_bank():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    query = torch.tensor([[1.0, 0.05], [0.05, 1.0], [-1.0, -0.1]])
    scores = knn_predict(query, bank, labels, 3, k=2, temperature=0.1)
    assert scores.argmax(1).tolist() == [0, 1, 2]


def test_matches_an_independent_numpy_formulation():
    g = torch.Generator().manual_seed(0)
    bank, query = torch.randn(50, 8, generator=g), torch.randn(7, 8, generator=g)
    labels = torch.randint(0, 4, (50,), generator=g)
    got = knn_predict(query, bank, labels, 4, k=5, temperature=0.5, chunk=3).numpy()
    b = bank.numpy() / np.linalg.norm(bank.numpy(), axis=1, keepdims=True)
    q = query.numpy() / np.linalg.norm(query.numpy(), axis=1, keepdims=True)
    for i in range(7):
        sim = b @ q[i]
        top = np.argsort(-sim)[:5]
        expected = np.zeros(4)
        for j in top:
            expected[labels[j]] += np.exp(sim[j] / 0.5)
        assert got[i] == pytest.approx(expected, rel=1e-5)


def test_k_larger_than_bank_uses_the_whole_bank():
    scores = knn_predict(torch.ones(1, 2), torch.ones(3, 2), torch.tensor([1, 1, 0]), 2, k=20)
    assert scores.argmax(1).item() == 1
