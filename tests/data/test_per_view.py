"""Asymmetric views (BYOL): per-view overrides of data.augment, and explicit colour-jitter factors."""

from __future__ import annotations

import pytest
import torch

from cssl.core.errors import ConfigError
from cssl.data import ViewAugment
from cssl.data.plan import ViewPlan

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
PLAIN = {"crop_scale": [0.08, 1.0], "hflip": True, "jitter_strength": 0.0, "grayscale_p": 0.0, "blur_p": 0.0}


def _plan(per_view, augment=PLAIN):
    return ViewPlan(augment=dict(augment), per_view=per_view)


def test_each_view_takes_its_own_overrides():
    # a flat image at 0.9: every op but solarisation leaves it unchanged, and solarisation maps it to 0.1
    x = torch.full((4, 3, 20, 20), 0.9)
    views = _plan([{"solarize_p": 0.0}, {"solarize_p": 1.0}]).transform(16, MEAN, STD)
    a, b = views(x)
    assert torch.allclose(a, torch.full_like(a, (0.9 - 0.5) / 0.25), atol=1e-5)
    assert torch.allclose(b, torch.full_like(b, (0.1 - 0.5) / 0.25), atol=1e-5)
    # without overrides both views are alike; an empty mapping keeps data.augment for that view
    for per_view in (None, [{}, {}]):
        a, b = _plan(per_view, {**PLAIN, "solarize_p": 1.0}).transform(16, MEAN, STD)(x)
        assert torch.allclose(a, b) and torch.allclose(a, torch.full_like(a, -1.6), atol=1e-5)


@pytest.mark.parametrize(
    ("per_view", "match"),
    [
        ([{"solarize_p": 0.2}], "list of 2 mappings"),
        ({"solarize_p": 0.2}, "list of 2 mappings"),
        ([{"solarize_p": 0.2}, 3], "list of 2 mappings"),
        ([{}, {"solarise_p": 0.2}], "unknown augmentation keys \\['solarise_p'\\]"),
        ([{}, {"solarize_p": 2.0}], "solarize_p"),
    ],
)
def test_bad_per_view_overrides_are_one_line_config_errors(per_view, match):
    with pytest.raises(ConfigError, match=match) as err:
        _plan(per_view).transform(16, MEAN, STD)
    assert "\n" not in str(err.value)


def test_explicit_jitter_factors_set_the_saturation_range():
    # saturation only, factor in [0.8, 1.2] (BYOL's 0.2): out - gray = f (x - gray) in every channel
    torch.manual_seed(0)
    view = ViewAugment(8, hflip=False, jitter_p=1.0, grayscale_p=0.0, jitter_factors=(0.0, 0.0, 0.2, 0.0))
    colour = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    x = colour.expand(400, 3, 8, 8).contiguous()
    out = view.jitter.apply(x, view.jitter.sample(x.shape[0]))  # the jitter alone, before normalisation
    gray = (torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1) * colour).sum(1, keepdim=True)
    factor = ((out - gray) / (colour - gray))[:, :, 0, 0]  # (400, 3)
    assert (factor - factor[:, :1]).abs().max() < 1e-3  # one factor per image, the same in every channel
    f = factor[:, 0]
    assert f.min() >= 0.8 - 1e-3 and f.max() <= 1.2 + 1e-3
    assert f.min() < 0.82 and f.max() > 1.18  # the whole range is drawn


@pytest.mark.parametrize("factors", [(0.4, 0.4, 0.2), (0.4, 0.4, -0.2, 0.1), (0.4, 0.4, 0.2, 0.6), "strong"])
def test_bad_jitter_factors(factors):
    with pytest.raises(ConfigError, match="data.augment.jitter_factors"):
        ViewAugment(8, jitter_factors=factors)
