"""The adversarial bank (AdCo): METHODS.md vectors, finite differences, filling, masks and bad values."""

import pytest
import torch
import torch.nn.functional as F

from cssl.contrastive import AdversarialBank, bank_loss_and_gradient, info_nce
from cssl.core.errors import ConfigError
from tests.contrastive.reference import reference_loss

Q = F.normalize(torch.tensor([[1.0, 2.0], [2.0, -1.0]]), dim=1)
K = F.normalize(torch.tensor([[1.0, 1.0], [1.0, -1.0]]), dim=1)
W0 = torch.tensor([[1.0, 0.0, -2.0], [0.5, -1.0, 1.0]])
W1 = torch.tensor([[0.747006, 0.421085, -1.990610], [1.005237, -0.999700, 1.017281]])


def _explicit_mem_loss(q, keys, w, t, offset, valid=None):
    """CE of [q.k_all | q.normalize(W)] / t written out with F.cross_entropy (independent of the module)."""
    d = w / w.norm(dim=0, keepdim=True)
    logits = torch.cat([q @ keys.T, q @ d], dim=1) / t
    if valid is not None:
        logits[:, keys.shape[0] :] = logits[:, keys.shape[0] :].masked_fill(~valid, float("-inf"))
    labels = torch.arange(q.shape[0]) + offset
    return F.cross_entropy(logits, labels)


def _bank(w, **kwargs) -> AdversarialBank:
    bank = AdversarialBank(w.shape[0], w.shape[1], init="random", **kwargs)
    bank.weight.copy_(w)
    return bank


def test_network_loss_vector():
    pos, sim, neg_mask = _bank(W0).similarities(Q, K, pos_offset=0)
    assert sim.shape == (2, 5) and neg_mask.sum().item() == 2 * 4
    assert info_nce(pos, sim, 0.12, neg_mask=neg_mask).item() == pytest.approx(0.163583, abs=1e-6)
    assert _explicit_mem_loss(Q, K, W0, 0.12, 0).item() == pytest.approx(0.163583, abs=1e-6)


def test_one_bank_step_vector_and_loss_rises():
    bank = _bank(W0, temperature=0.2, lr=3.0, momentum=0.9, weight_decay=1e-4)
    before = bank.accumulate(Q, K, pos_offset=0)
    assert before.item() == pytest.approx(0.328791, abs=1e-6)
    bank.step()
    assert torch.allclose(bank.weight, W1, atol=1e-6)
    assert torch.allclose(bank.velocity, (W0 - W1) / 3.0, atol=1e-6)
    assert _explicit_mem_loss(Q, K, bank.weight, 0.2, 0).item() == pytest.approx(0.582314, abs=1e-6)


def test_second_step_uses_momentum():
    bank = _bank(W0, temperature=0.2, lr=3.0, momentum=0.9, weight_decay=1e-4)
    bank.accumulate(Q, K, pos_offset=0)
    bank.step()
    v1 = bank.velocity.clone()
    w = bank.weight.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_explicit_mem_loss(Q, K, w, 0.2, 0), w)
    bank.accumulate(Q, K, pos_offset=0)
    bank.step()
    v2 = 0.9 * v1 - grad + 1e-4 * W1
    assert torch.allclose(bank.velocity, v2, atol=1e-5)
    assert torch.allclose(bank.weight, w.detach() - 3.0 * v2, atol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_gradient_matches_finite_differences_float64(masked):
    g = torch.Generator().manual_seed(1)
    b, b_global, d, k, offset, t = 3, 6, 4, 5, 3, 0.3
    q = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    keys = F.normalize(torch.randn(b_global, d, generator=g, dtype=torch.float64), dim=1)
    w = torch.randn(d, k, generator=g, dtype=torch.float64)
    valid = torch.tensor([True, True, False, True, False]) if masked else None
    loss, grad = bank_loss_and_gradient(q, keys, w, t, offset, valid)
    assert grad.dtype == torch.float64
    assert loss.item() == pytest.approx(_explicit_mem_loss(q, keys, w, t, offset, valid).item(), abs=1e-12)
    eps = 1e-6
    numeric = torch.zeros_like(w)
    for i in range(d):
        for j in range(k):
            step = torch.zeros_like(w)
            step[i, j] = eps
            up = _explicit_mem_loss(q, keys, w + step, t, offset, valid)
            down = _explicit_mem_loss(q, keys, w - step, t, offset, valid)
            numeric[i, j] = (up - down) / (2 * eps)
    assert torch.allclose(grad, numeric, atol=1e-8)
    if masked:
        assert torch.equal(grad[:, ~valid], torch.zeros(d, 2, dtype=torch.float64))


def test_small_ascent_step_increases_the_bank_loss():
    g = torch.Generator().manual_seed(2)
    q = F.normalize(torch.randn(8, 16, generator=g), dim=1)
    keys = F.normalize(torch.randn(8, 16, generator=g), dim=1)
    w = torch.randn(16, 32, generator=g)
    bank = _bank(w, temperature=0.1, lr=0.05, momentum=0.0, weight_decay=0.0)
    before = bank.accumulate(q, keys, pos_offset=0)
    bank.step()
    after = _explicit_mem_loss(q, keys, bank.weight, 0.1, 0)
    assert after.item() > before.item() + 1e-3


def test_weighted_accumulation_sums_the_crops_gradients():
    g = torch.Generator().manual_seed(3)
    qs = [F.normalize(torch.randn(4, 8, generator=g), dim=1) for _ in range(3)]
    keys = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    w = torch.randn(8, 10, generator=g)
    weights = [0.5, 0.5, 1.0]
    bank = _bank(w, temperature=0.2, lr=1.0, momentum=0.9, weight_decay=0.0)
    for q, weight in zip(qs, weights, strict=True):
        bank.accumulate(q, keys, pos_offset=0, weight=weight)
    bank.step()
    wr = w.clone().requires_grad_(True)
    total = sum(weight * _explicit_mem_loss(q, keys, wr, 0.2, 0) for q, weight in zip(qs, weights, strict=True))
    (grad,) = torch.autograd.grad(total, wr)
    assert torch.allclose(bank.weight, w + grad, atol=1e-5)  # W - lr * (-grad)


def test_key_init_fills_columns_in_order_and_masks_empty_ones():
    bank = AdversarialBank(2, 5, init="keys")
    assert int(bank.filled) == 0 and torch.equal(bank.weight, torch.zeros(2, 5))
    keys = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    pos, sim, neg_mask = bank.similarities(Q, K, pos_offset=0)
    assert not neg_mask[:, 2:].any()  # an empty bank contributes no negatives, only the other key does
    assert info_nce(pos, sim, 0.12, neg_mask=neg_mask).item() == pytest.approx(
        reference_loss(pos.numpy(), [sim[0, 1:2].numpy(), sim[1, 0:1].numpy()], 0.12, "infonce", 0, 0), abs=1e-6
    )
    bank.accumulate(Q, K, pos_offset=0)
    bank.offer_keys(keys)
    bank.step()  # the empty bank had no gradient; then columns 0..2 take the keys
    assert int(bank.filled) == 3
    assert torch.allclose(bank.weight[:, :3], keys.T) and torch.equal(bank.weight[:, 3:], torch.zeros(2, 2))
    valid = bank.valid()
    assert valid.tolist() == [True, True, True, False, False]
    _, _, neg_mask = bank.similarities(Q, K, pos_offset=0)
    assert neg_mask[:, 2:].tolist() == [[True, True, True, False, False]] * 2
    bank.offer_keys(keys.flip(0))
    bank.step()  # only two columns were left: the first two of the offered keys
    assert int(bank.filled) == 5 and bank.is_full() and bank.valid() is None
    assert torch.allclose(bank.weight[:, 3:], keys.flip(0)[:2].T)
    bank.offer_keys(keys)  # full: ignored
    before = bank.weight.clone()
    bank.step()
    assert torch.equal(bank.weight, before)


def test_dcl_estimator_counts_keys_and_bank_negatives():
    bank = _bank(W0)
    pos, sim, neg_mask = bank.similarities(Q, K, pos_offset=0)
    negs = [sim[0, [1, 2, 3, 4]].numpy(), sim[1, [0, 2, 3, 4]].numpy()]
    got = info_nce(pos, sim, 0.5, estimator="dcl", tau_plus=0.1, neg_mask=neg_mask).item()
    assert got == pytest.approx(reference_loss(pos.numpy(), negs, 0.5, "dcl", 0.1, 0.0), abs=1e-6)


def test_computed_in_fp32_under_autocast():
    bank = _bank(W0, temperature=0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pos, sim, _ = bank.similarities(Q.bfloat16(), K, pos_offset=0)
        loss, grad = bank_loss_and_gradient(Q.bfloat16(), K.bfloat16(), W0, 0.2, 0)
    assert sim.dtype == grad.dtype == torch.float32
    _, grad32 = bank_loss_and_gradient(Q.bfloat16().float(), K.bfloat16().float(), W0, 0.2, 0)
    assert torch.allclose(grad, grad32)


def test_bank_and_velocity_are_saved_as_buffers():
    bank = _bank(W0, temperature=0.2, lr=3.0)
    bank.accumulate(Q, K, pos_offset=0)
    bank.step()
    state = bank.state_dict()
    assert set(state) == {"weight", "velocity", "filled"}
    fresh = AdversarialBank(2, 3, init="keys", temperature=0.2, lr=3.0)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.weight, bank.weight) and torch.equal(fresh.velocity, bank.velocity)
    assert fresh.is_full() and not any(p.requires_grad for p in fresh.parameters())


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"size": 0}, "method.bank_size"),
        ({"size": 2.5}, "method.bank_size"),
        ({"temperature": 0.0}, "method.mem_t"),
        ({"temperature": -1.0}, "method.mem_t"),
        ({"lr": -0.1}, "method.mem_lr"),
        ({"momentum": 1.0}, "method.mem_momentum"),
        ({"weight_decay": -1e-4}, "method.mem_wd"),
        ({"init": "zeros"}, "method.bank_init"),
    ],
)
def test_bad_values(kwargs, key):
    args = {"dim": 4, "size": 8, **kwargs}
    with pytest.raises(ConfigError, match=key) as err:
        AdversarialBank(args.pop("dim"), args.pop("size"), **args)
    assert "\n" not in str(err.value)
