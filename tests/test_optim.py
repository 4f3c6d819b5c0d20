import math

import pytest
import torch
import torch.nn as nn

from cssl.core.errors import ConfigError
from cssl.models.optim import OptimSettings, build_optimizer, param_groups, warmup_cosine


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2), nn.LayerNorm(2))


def test_bias_and_norm_parameters_get_no_weight_decay():
    net = _net()
    decay, no_decay = param_groups([net], 1e-4, exclude_bias_norm=True)
    assert {id(p) for p in decay["params"]} == {id(net[0].weight), id(net[3].weight)}
    assert len(no_decay["params"]) == 6 and no_decay["weight_decay"] == 0.0
    (only,) = param_groups([net], 1e-4, exclude_bias_norm=False)
    assert len(only["params"]) == 8


def test_lars_adapts_weights_only():
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    groups = param_groups([net], 1e-4, exclude_bias_norm=True)
    opt = build_optimizer(groups, OptimSettings(name="lars", lr=1.0, momentum=0.0), lr=1.0)
    w0, b0 = net.weight.detach().clone(), net.bias.detach().clone()
    net(torch.randn(8, 4)).pow(2).sum().backward()
    gw, gb = net.weight.grad.clone(), net.bias.grad.clone()
    opt.step()
    # bias: plain SGD step; weight: step scaled by the trust ratio 0.001 * |w| / (|g| + wd |w|)
    assert torch.allclose(net.bias, b0 - gb)
    g = gw + 1e-4 * w0
    ratio = 0.001 * w0.norm() / (gw.norm() + 1e-4 * w0.norm())
    assert torch.allclose(net.weight, w0 - ratio * g, atol=1e-6)


@pytest.mark.parametrize("lr,clipped", [(1.0, True), (1e-4, False)])
def test_lars_trust_coefficient_and_clipping(lr, clipped):
    # solo-learn's LARS (eta 0.02, clip_lr): rate of a weight = lr * min(eta |w| / (|g| + wd |w|) / lr, 1)
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    groups = param_groups([net], 1e-2, exclude_bias_norm=True)
    settings = OptimSettings(name="lars", lr=lr, momentum=0.0, weight_decay=1e-2, lars_eta=0.02, lars_clip=True)
    opt = build_optimizer(groups, settings, lr=lr)
    w0 = net.weight.detach().clone()
    net(torch.randn(8, 4)).pow(2).sum().backward()
    gw = net.weight.grad.clone()
    opt.step()
    ratio = 0.02 * w0.norm() / (gw.norm() + 1e-2 * w0.norm())
    assert (ratio / lr < 1) == clipped  # both branches of the clip are exercised
    scale = min(ratio.item() / lr, 1.0)
    assert torch.allclose(net.weight, w0 - lr * scale * (gw + 1e-2 * w0), atol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "lars", "adamw", "adam"])
def test_every_optimizer_builds(name):
    opt = build_optimizer(param_groups([_net()], 1e-4, True), OptimSettings(name=name), lr=0.1)
    assert opt.param_groups[0]["lr"] == 0.1


def test_learning_rate_scales_with_global_batch():
    assert OptimSettings(lr=0.3).peak_lr(1024) == pytest.approx(1.2)
    assert OptimSettings(lr=0.3, scale_lr=False).peak_lr(1024) == 0.3


def test_warmup_then_cosine():
    values = [warmup_cosine(s, 10, 110) for s in range(111)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0) and values[10] == pytest.approx(1.0)
    assert values[60] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert values[110] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))
    assert warmup_cosine(110, 10, 110, min_ratio=0.1) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "rmsprop"},
        {"lr": 0.0},
        {"weight_decay": -1.0},
        {"warmup_epochs": -1},
        {"min_lr_ratio": 2.0},
        {"lars_eta": 0.0},
    ],
)
def test_bad_settings(kwargs):
    with pytest.raises(ConfigError, match="optimizer"):
        OptimSettings(**kwargs)


def _schedule(settings: OptimSettings, *, max_epochs: int, steps_per_epoch: int) -> list[list[float]]:
    """The rate of every step, epoch by epoch, as Lightning drives the scheduler of ``configure_schedule``."""
    from types import SimpleNamespace

    from cssl.models.optim import configure_schedule

    trainer = SimpleNamespace(
        estimated_stepping_batches=max_epochs * steps_per_epoch, max_steps=-1, max_epochs=max_epochs
    )
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=settings.lr)
    config = configure_schedule(trainer, opt, settings)
    scheduler, interval = config["lr_scheduler"]["scheduler"], config["lr_scheduler"]["interval"]
    rates = []
    for _ in range(max_epochs):
        epoch = []
        for _ in range(steps_per_epoch):
            epoch.append(opt.param_groups[0]["lr"])
            opt.step()
            if interval == "step":
                scheduler.step()
        if interval == "epoch":
            scheduler.step()
        rates.append(epoch)
    return rates


def test_cosine_per_epoch_is_adcos_adjust_learning_rate():
    # AdCo lincls.py:723-735 (and MoCo's main_moco.py with --cos): lr_e = end + (lr - end) (1 + cos(pi e / E)) / 2,
    # set at the start of epoch e and held for the whole epoch.
    lr, end, epochs = 10.0, 0.01, 7
    settings = OptimSettings(lr=lr, min_lr_ratio=end / lr, schedule_interval="epoch", scale_lr=False)
    rates = _schedule(settings, max_epochs=epochs, steps_per_epoch=3)
    for e, epoch in enumerate(rates):
        expected = end + 0.5 * (1 + math.cos(math.pi * e / epochs)) * (lr - end)
        assert epoch == pytest.approx([expected] * 3)


def test_cosine_per_step_changes_within_an_epoch():
    settings = OptimSettings(lr=1.0, schedule_interval="step")
    rates = _schedule(settings, max_epochs=2, steps_per_epoch=4)
    flat = [r for epoch in rates for r in epoch]
    assert flat == pytest.approx([0.5 * (1 + math.cos(math.pi * s / 8)) for s in range(8)])
    assert rates[0][0] != rates[0][1]


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_step_decay_at_milestones_is_mocos(interval):
    # MoCo main_lincls.py:593-599: lr x 0.1 for every milestone <= epoch (milestones [60, 80] of 100 epochs;
    # here [2, 4] of 5); per step the decay falls on the first step of the milestone's epoch as well.
    settings = OptimSettings(lr=30.0, schedule="steps", milestones=[2, 4], schedule_interval=interval)
    rates = _schedule(settings, max_epochs=5, steps_per_epoch=3)
    for e, epoch in enumerate(rates):
        assert epoch == pytest.approx([30.0 * 0.1 ** sum(e >= m for m in (2, 4))] * 3)


def test_warmup_per_epoch():
    rates = _schedule(
        OptimSettings(lr=1.0, warmup_epochs=2, schedule_interval="epoch"), max_epochs=6, steps_per_epoch=2
    )
    assert [epoch[0] for epoch in rates[:3]] == pytest.approx([0.5, 1.0, 1.0])
    assert all(len(set(epoch)) == 1 for epoch in rates)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"schedule": "linear"}, "optimizer.schedule must"),
        ({"schedule_interval": "batch"}, "optimizer.schedule_interval"),
        ({"milestones": [80, 60]}, "optimizer.milestones"),
        ({"milestones": "60"}, "optimizer.milestones"),
        ({"gamma": 0.0}, "optimizer.gamma"),
    ],
)
def test_bad_schedule_settings(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        OptimSettings(**kwargs)


def test_milestones_from_a_composed_config():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"milestones": [], "schedule": "steps"})
    assert OptimSettings(**cfg).milestones == ()
    assert OptimSettings(milestones=OmegaConf.create([60, 80])).milestones == (60.0, 80.0)
