"""HCL's beta annealing against the official loop (joshr17/HCL image/main.py:151-154, 176-181)."""

import numpy as np
import pytest

from cssl.contrastive.estimators import annealed_beta


def official_betas(beta: float, epochs: int) -> list[float]:
    """The beta each epoch 1..E trains with, by running the official loop's bookkeeping."""
    n_steps = 9
    betas = iter(np.linspace(beta, 0, n_steps))
    used = []
    for epoch in range(1, epochs + 1):
        used.append(float(beta))  # train(..., beta) of this epoch
        if epoch % (int(epochs / n_steps)) == 0:
            beta = next(betas)
    return used


@pytest.mark.parametrize("epochs", [400, 200, 27, 18, 9])
def test_the_official_sequence(epochs):
    expected = official_betas(0.8, epochs)
    assert [annealed_beta(0.8, e, epochs) for e in range(epochs)] == pytest.approx(expected, abs=1e-12)


def test_400_epochs_by_hand():
    # 1, 1, 7/8, ..., 1/8 of beta for 44 epochs each, then 0 for the last 4
    blocks = [1.0, 1.0, *[k / 8 for k in range(7, 0, -1)]]
    expected = [b for b in blocks for _ in range(44)] + [0.0] * 4
    assert [annealed_beta(1.0, e, 400) for e in range(400)] == pytest.approx(expected)
    # the previous schedule (9 equal steps of the step count) differed in 356 of these 400 epochs
    old = [1.0 * (1 - min(9, int(e / 400 * 10)) / 9) for e in range(400)]
    assert sum(abs(a - b) > 1e-12 for a, b in zip(old, expected, strict=True)) == 356


def test_runs_where_the_official_loop_fails():
    # E < 9 divides by zero there; 10 * int(E / 9) <= E draws a tenth value (StopIteration)
    assert [annealed_beta(1.0, e, 4) for e in range(4)] == [1.0, 1.0, 0.875, 0.75]
    with pytest.raises(StopIteration):
        official_betas(1.0, 20)
    assert [annealed_beta(1.0, e, 20) for e in range(18, 20)] == [0.0, 0.0]
