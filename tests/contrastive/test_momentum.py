import math

import pytest
import torch
import torch.nn as nn

from cssl.contrastive.momentum import MomentumEncoder
from cssl.core.errors import ConfigError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_copy_is_frozen_and_equal_at_start():
    online = _net()
    key = MomentumEncoder(online, momentum=0.9)
    for p, q in zip(key.encoder.parameters(), online.parameters(), strict=True):
        assert torch.equal(p, q) and not p.requires_grad
    assert torch.equal(key.encoder[1].running_mean, online[1].running_mean)


def test_ema_step_is_m_key_plus_one_minus_m_online():
    online = _net()
    key = MomentumEncoder(online, momentum=0.9)
    before = [p.clone() for p in key.encoder.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    key.update(online, 0.9)
    for k0, k1, q in zip(before, key.encoder.parameters(), online.parameters(), strict=True):
        assert torch.allclose(k1, 0.9 * k0 + 0.1 * q)


def test_cosine_schedule_rises_to_one():
    key = MomentumEncoder(_net(), momentum=0.99, schedule="cosine")
    assert key.momentum_at(0, 100) == pytest.approx(0.99)
    assert key.momentum_at(50, 100) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 2) + 1) / 2)
    assert key.momentum_at(100, 100) == pytest.approx(1.0)
    assert MomentumEncoder(_net(), momentum=0.99).momentum_at(50, 100) == 0.99


def test_cosine_schedule_ends_at_momentum_end():
    # solo-learn's MomentumUpdater.update_tau (solo/utils/momentum.py:84-87), written out independently:
    # tau = final - (final - base) * (cos(pi * step / max_steps) + 1) / 2
    base, end, total = 0.99, 0.999, 400
    key = MomentumEncoder(_net(), momentum=base, schedule="cosine", momentum_end=end)
    for step, expected in ((0, 0.99), (100, 0.999 - 0.009 * (math.sqrt(0.5) + 1) / 2), (200, 0.9945), (400, 0.999)):
        assert key.momentum_at(step, total) == pytest.approx(expected, abs=1e-12), step
    assert key.momentum_at(10_000, total) == pytest.approx(end)  # clamped past the end of the run
    values = [key.momentum_at(s, total) for s in range(total + 1)]
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))
    # the constant schedule ignores momentum_end; the default end keeps the rise to 1
    assert MomentumEncoder(_net(), momentum=base, momentum_end=end).momentum_at(200, total) == base
    assert MomentumEncoder(_net(), momentum=base, schedule="cosine").momentum_at(total, total) == 1.0


def test_no_gradient_flows_through_the_key_encoder():
    key = MomentumEncoder(_net())
    x = torch.randn(4, 3, requires_grad=True)
    assert not key(x).requires_grad


@pytest.mark.parametrize(
    "kwargs",
    [
        {"momentum": 1.5},
        {"momentum": -0.1},
        {"schedule": "linear"},
        {"momentum_end": 1.5},
        {"momentum": 0.99, "schedule": "cosine", "momentum_end": 0.9},
    ],
)
def test_bad_values(kwargs):
    with pytest.raises(ConfigError, match="momentum"):
        MomentumEncoder(_net(), **kwargs)
