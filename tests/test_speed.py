"""Speed features: the fused in-batch loss equals the generic one, channels_last and bf16 autocast leave a SimCLR
step's loss unchanged, compile is applied or skipped cleanly, and no training step reads device values on the host."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from cssl.contrastive import in_batch_similarities, info_nce, nt_xent
from cssl.methods import METHODS
from cssl.methods.simclr import SimCLR
from cssl.models import speed
from cssl.models.backbones import build_backbone
from cssl.models.optim import OptimSettings
from tests.conftest import TinyNet

# aten ops that copy a device value to the host, or whose output size depends on tensor values (both wait
# for the device): .item(), bool(t), int(t), float(t), `if t:` all end in _local_scalar_dense.
SYNC_OPS = {
    "_local_scalar_dense",
    "nonzero",
    "nonzero_static",
    "masked_select",
    "unique",
    "_unique",
    "_unique2",
    "unique_consecutive",
    "unique_dim",
    "repeat_interleave",
    "_to_cpu",
    "equal",
    "is_nonzero",
}
# Methods whose step is known to read device values on the host, with their count (none today; AdCo's bank keeps a
# host copy of its fill count), so that any new sync fails the test.
KNOWN_SYNCS: dict[str, int] = {}


class SyncCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNC_OPS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def test_sync_counter_sees_item_bool_and_boolean_indexing():
    x = torch.arange(4.0)
    with SyncCounter() as counter:
        x.sum().item()
        if x[0] > 1:
            pass
        x.masked_select(x > 1)
        torch.nonzero(x)
    assert counter.calls == ["_local_scalar_dense", "_local_scalar_dense", "masked_select", "nonzero"]


def tiny_method(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    options = {"num_classes": 3, "batch_size": 8, "optim": OptimSettings(), "proj_hidden_dim": 16}
    extra = {
        "moco": {"queue_size": 32},
        "mochi": {"queue_size": 32, "n_hard": 8, "s": 4, "s_prime": 2, "mochi_warmup_epochs": 0},
        "adco": {"bank_size": 8},  # full after the first step (the steady state)
    }
    return METHODS[name](TinyNet(6, bn=False, relu=False), **options, **extra.get(name, {}))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_training_step_does_not_read_device_values(name):
    model = tiny_method(name)
    batch = ([torch.randn(8, 3, 8, 8), torch.randn(8, 3, 8, 8)], torch.tensor([0, 1, 2, -1, 0, 1, 2, 0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        model.training_step(batch, 0)  # first step: lazy state (AdCo fills its bank) settles
        with SyncCounter() as counter:
            loss = model.training_step(batch, 1)
            model.after_batch()
    assert torch.isfinite(loss)
    assert len(counter.calls) <= KNOWN_SYNCS.get(name, 0), counter.calls


@pytest.mark.parametrize("estimator", ["infonce", "dcl", "hcl"])
@pytest.mark.parametrize("t", [0.01, 0.2])  # 0.01: row-max shift; 0.2: the fixed shift
def test_fused_nt_xent_equals_info_nce_over_the_masked_similarities(estimator, t):
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(6, 5, generator=g, dtype=torch.float64).requires_grad_()
    z2 = torch.randn(6, 5, generator=g, dtype=torch.float64).requires_grad_()
    options = {"estimator": estimator, "tau_plus": 0.1, "beta": 0.8}
    fused = nt_xent(z1, z2, t, **options)
    fused_grads = torch.autograd.grad(fused, (z1, z2))
    pos, sim, mask = in_batch_similarities(z1, z2)
    generic = info_nce(pos, sim, t, neg_mask=mask, **options)
    generic_grads = torch.autograd.grad(generic, (z1, z2))
    assert fused.item() == pytest.approx(generic.item(), rel=1e-10)
    for a, b in zip(fused_grads, generic_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_fused_nt_xent_in_fp32_matches_fp64_for_hard_low_temperature_rows():
    g = torch.Generator().manual_seed(4)
    base = F.normalize(torch.randn(1, 16, generator=g), dim=1)
    z1 = base + 0.05 * torch.randn(64, 16, generator=g)  # near-identical rows: every negative is hard
    z2 = base + 0.05 * torch.randn(64, 16, generator=g)
    for t in (0.01, 0.05):
        got = nt_xent(z1, z2, t, estimator="hcl", tau_plus=0.1, beta=1.0)
        exact = nt_xent(z1.double(), z2.double(), t, estimator="hcl", tau_plus=0.1, beta=1.0)
        assert torch.isfinite(got) and got.item() == pytest.approx(exact.item(), rel=1e-4)


def simclr() -> SimCLR:
    torch.manual_seed(0)
    net = build_backbone("resnet18", cifar_stem=True)
    return SimCLR(net, num_classes=3, batch_size=8, optim=OptimSettings(), proj_hidden_dim=32, temperature=0.2)


def step_loss(model: SimCLR, views: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        return model.training_step((views, y), 0)


def test_channels_last_and_bf16_autocast_give_the_default_loss():
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    y = torch.randint(0, 3, (8,), generator=g)
    reference = step_loss(simclr(), views, y)

    fast = simclr()
    speed.use_channels_last(fast)
    seen = []
    fast.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    got = step_loss(fast, views, y)
    assert fast.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    assert got.item() == pytest.approx(reference.item(), rel=1e-4)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = step_loss(simclr(), views, y)
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(reference.item(), rel=3e-2)
    assert mixed.item() != reference.item()  # bf16 was really used


def test_compile_is_skipped_with_a_warning_where_unsupported(monkeypatch):
    model = tiny_method("simclr")
    x = torch.randn(2, 3, 8, 8)
    expected = model.backbone(x)

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(UserWarning, match="compile=true skipped.*no C\\+\\+ compiler found"):
        assert speed.compile_backbone(model) is False
    torch.testing.assert_close(model.backbone(x), expected)


def test_compile_here_gives_the_eager_output_or_warns():
    model = tiny_method("simclr")
    x = torch.randn(2, 3, 8, 8)
    expected = model.backbone(x)
    keys = set(model.state_dict())
    if speed.compile_unsupported() is None:  # this machine compiles: the compiled backbone must agree
        assert speed.compile_backbone(model) is True
        torch.testing.assert_close(model.backbone(x), expected, rtol=1e-5, atol=1e-6)
        assert set(model.state_dict()) == keys  # checkpoints unchanged
    else:
        with pytest.warns(UserWarning, match="compile=true skipped"):
            assert speed.compile_backbone(model) is False
