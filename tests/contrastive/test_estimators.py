import math

import numpy as np
import pytest
import torch

from cssl.contrastive import info_nce, info_nce_per_anchor, nt_xent
from cssl.core.errors import ConfigError
from tests.contrastive.reference import reference_loss, reference_nt_xent

U = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0]])
V = torch.tensor([[1.0, 1.0], [0.0, 2.0], [-1.0, -1.0]])


@pytest.mark.parametrize(
    ("estimator", "tau_plus", "beta", "expected"),
    [
        ("infonce", 0.0, 0.0, 1.112846),
        ("dcl", 0.1, 0.0, 1.038401),
        ("dcl", 0.5, 0.0, 0.970178),
        ("hcl", 0.1, 1.0, 1.392715),
        ("hcl", 0.1, 0.5, 1.283874),
        ("hcl", 0.0, 1.0, 1.439641),
    ],
)
def test_methods_md_vectors(estimator, tau_plus, beta, expected):
    loss = nt_xent(U, V, 0.5, estimator=estimator, tau_plus=tau_plus, beta=beta)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss64 = nt_xent(U.double(), V.double(), 0.5, estimator=estimator, tau_plus=tau_plus, beta=beta)
    assert loss64.item() == pytest.approx(expected, abs=1e-6)


def test_simclr_tf_convention_is_twice_the_mean():
    assert 2 * nt_xent(U, V, 0.5).item() == pytest.approx(2.225692, abs=1e-6)


def test_dcl_vector_clamps_anchors_u2_and_v2():
    z = torch.nn.functional.normalize(torch.cat([U, V]).double(), dim=1)
    sim = z @ z.T
    partner = (torch.arange(6) + 3) % 6
    mask = torch.ones(6, 6, dtype=torch.bool)
    mask[torch.arange(6), torch.arange(6)] = False
    mask[torch.arange(6), partner] = False
    pos = sim[torch.arange(6), partner]
    losses = info_nce_per_anchor(pos, sim, 0.5, estimator="dcl", tau_plus=0.1, neg_mask=mask)
    floor = torch.log1p(4 * math.exp(-2) / torch.exp(pos / 0.5))  # loss with Ng = N e^{-1/t}
    clamped = torch.isclose(losses, floor)
    assert clamped.tolist() == [False, False, True, False, False, True]


@pytest.mark.parametrize("estimator", ["infonce", "dcl", "hcl"])
@pytest.mark.parametrize("t", [0.07, 0.5, 1.0])
def test_against_independent_float64_formulation_with_masks(estimator, t):
    g = torch.Generator().manual_seed(0)
    b, m = 7, 13
    pos = torch.rand(b, generator=g, dtype=torch.float64) * 2 - 1
    neg = torch.rand(b, m, generator=g, dtype=torch.float64) * 2 - 1
    mask = torch.rand(b, m, generator=g) > 0.3
    mask[:, 0] = True  # every row has a negative
    got = info_nce(pos, neg, t, estimator=estimator, tau_plus=0.1, beta=0.7, neg_mask=mask).item()
    rows = [neg[i][mask[i]].numpy() for i in range(b)]
    expected = reference_loss(pos.numpy(), rows, t, estimator, 0.1, 0.7)
    assert got == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("estimator", ["infonce", "dcl", "hcl"])
def test_nt_xent_against_reference_on_random_batch(estimator):
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    got = nt_xent(z1, z2, 0.3, estimator=estimator, tau_plus=0.05, beta=0.5).item()
    expected = reference_nt_xent(z1.numpy(), z2.numpy(), 0.3, estimator, 0.05, 0.5)
    assert got == pytest.approx(expected, rel=1e-5)


def test_invariants_tau_plus_zero_is_infonce_and_beta_zero_is_dcl():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    base = nt_xent(z1, z2, 0.5)
    assert nt_xent(z1, z2, 0.5, estimator="dcl", tau_plus=0.0).item() == pytest.approx(base.item(), rel=1e-6)
    assert nt_xent(z1, z2, 0.5, estimator="hcl", tau_plus=0.0, beta=0.0).item() == pytest.approx(base.item(), rel=1e-6)
    dcl = nt_xent(z1, z2, 0.5, estimator="dcl", tau_plus=0.2)
    assert nt_xent(z1, z2, 0.5, estimator="hcl", tau_plus=0.2, beta=0.0).item() == pytest.approx(dcl.item(), rel=1e-6)


@pytest.mark.parametrize("estimator", ["infonce", "dcl", "hcl"])
def test_gradients_match_finite_differences(estimator):
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    fn = lambda a, b: nt_xent(a, b, 0.5, estimator=estimator, tau_plus=0.1, beta=1.0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (z1, z2), eps=1e-6, atol=1e-6)


def test_hcl_importance_weights_are_not_detached():
    # With imp detached the gradient differs; the official code (which we follow) keeps it.
    g = torch.Generator().manual_seed(4)
    pos = torch.rand(3, generator=g, dtype=torch.float64)
    neg = (torch.rand(3, 5, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    info_nce(pos, neg, 0.5, estimator="hcl", tau_plus=0.0, beta=1.0).backward()
    t = 0.5
    neg_d = neg.detach().requires_grad_()
    imp = torch.exp(1.0 * neg_d / t).detach()
    ng = (imp * torch.exp(neg_d / t)).sum(1) / imp.mean(1)
    detached = (-torch.log(torch.exp(pos / t) / (torch.exp(pos / t) + ng))).mean()
    detached.backward()
    assert not torch.allclose(neg.grad, neg_d.grad)


@pytest.mark.parametrize("estimator", ["infonce", "dcl", "hcl"])
def test_small_temperature_many_hard_negatives_stays_finite_and_exact(estimator):
    g = torch.Generator().manual_seed(5)
    b, m, t = 4, 8192, 0.01
    pos = 0.9 + 0.05 * torch.rand(b, generator=g)
    neg = 0.8 + 0.19 * torch.rand(b, m, generator=g)  # hard: e^{0.99/0.01} overflows float32
    assert not torch.isfinite(torch.exp(neg / t * (1 + 1.0))).all()  # the naive formula overflows
    neg.requires_grad_()
    loss = info_nce(pos, neg, t, estimator=estimator, tau_plus=0.1, beta=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(neg.grad).all()
    exact = info_nce(pos.double(), neg.detach().double(), t, estimator=estimator, tau_plus=0.1, beta=1.0)
    assert loss.item() == pytest.approx(exact.item(), rel=1e-5)
    # the independent linear-space reference, in float64 with the common factor e^{-1/t} taken out
    shift = 1.0
    rows = [(neg[i].detach().double().numpy() - shift) for i in range(b)]
    ref = reference_loss((pos.double() - shift).numpy(), rows, t, estimator, 0.1, 1.0) if estimator != "dcl" else None
    if ref is not None and estimator == "infonce":
        assert loss.item() == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_fp32(dtype):
    g = torch.Generator().manual_seed(6)
    z1, z2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    ref = nt_xent(z1, z2, 0.1, estimator="hcl", tau_plus=0.1, beta=1.0)
    got = nt_xent(z1.to(dtype), z2.to(dtype), 0.1, estimator="hcl", tau_plus=0.1, beta=1.0)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = nt_xent(z1, z2, 0.1, estimator="hcl", tau_plus=0.1, beta=1.0)
    assert inside.dtype == torch.float32 and inside.item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"tau_plus": 1.0}, "tau_plus"),
        ({"tau_plus": -0.1}, "tau_plus"),
        ({"beta": -1.0}, "beta"),
        ({"estimator": "nce"}, "estimator"),
    ],
)
def test_bad_values_raise_a_config_error_naming_the_key(kwargs, word):
    args = {"temperature": 0.5, **kwargs}
    t = args.pop("temperature")
    with pytest.raises(ConfigError, match=word):
        info_nce(torch.zeros(2), torch.zeros(2, 3), t, **args)


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="pos"):
        info_nce(torch.zeros(2), torch.zeros(3, 3), 0.5)
    with pytest.raises(ValueError, match="z1"):
        nt_xent(torch.zeros(2, 3), torch.zeros(3, 3), 0.5)


def test_numpy_reference_sanity():
    # the reference itself reproduces the published vector, so it is independent evidence
    assert reference_nt_xent(U.numpy(), V.numpy(), 0.5) == pytest.approx(1.112846, abs=1e-6)
    assert np.isclose(reference_nt_xent(U.numpy(), V.numpy(), 0.5, "hcl", 0.1, 1.0), 1.392715, atol=1e-6)
