"""On-device augmentation (kornia): shapes, ranges, randomness, blur, validation, colour jitter convention."""

from __future__ import annotations

import kornia.augmentation as K
import pytest
import torch

from cssl.data import EvalTransform, MultiView, ViewAugment
from cssl.data.augment import blur_kernel_size
from cssl.errors import ConfigError

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def batch(b: int = 8, h: int = 40, w: int = 50, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


def ops_of(view: ViewAugment, kind: type) -> list:
    return [op for op in view.ops if isinstance(op, kind)]


@pytest.mark.parametrize("size", [32, 96])
def test_views_are_normalised_float_of_the_output_size(size):
    torch.manual_seed(0)
    view = ViewAugment(size, mean=MEAN, std=STD, blur_p=1.0, solarize_p=0.5)
    out = view(batch(b=4, h=size + 8, w=size + 20))
    assert out.dtype == torch.float32 and out.shape == (4, 3, size, size)
    raw = unnormalise(out)  # every step keeps pixel values in [0, 1] before normalisation
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    assert out.min() < 0 < out.max()  # normalised, not in [0, 1]


def test_two_views_of_one_image_differ_and_samples_get_their_own_parameters():
    torch.manual_seed(0)
    views = MultiView([ViewAugment(32, mean=MEAN, std=STD) for _ in range(2)])
    same = batch(b=1).expand(6, -1, -1, -1).contiguous()  # six copies of one image
    a, b = views(same)
    assert a.shape == b.shape == (6, 3, 32, 32)
    assert not torch.allclose(a, b)
    assert all(not torch.allclose(a[0], a[i]) for i in range(1, 6))


def test_blur_only_for_images_of_at_least_96_px_by_default():
    for size in (32, 64, 95):
        assert not ops_of(ViewAugment(size), K.RandomGaussianBlur)
    for size, kernel in ((96, 9), (224, 23)):
        (blur,) = ops_of(ViewAugment(size), K.RandomGaussianBlur)
        assert blur.p == 0.5 and blur.flags["kernel_size"] == (kernel, kernel)
    (forced,) = ops_of(ViewAugment(32, blur_p=1.0), K.RandomGaussianBlur)
    assert forced.p == 1.0
    assert not ops_of(ViewAugment(224, blur_p=0.0), K.RandomGaussianBlur)


def test_blur_kernel_is_ten_percent_of_the_side_and_odd():
    for size in range(8, 520):
        k = blur_kernel_size(size)
        assert k % 2 == 1 and k >= 3
        assert abs(k - 0.1 * size) <= 1 or (size < 30 and k == 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"crop_scale": (0.0, 1.0)},
        {"crop_scale": (0.6, 0.2)},
        {"crop_scale": (0.1, 1.2)},
        {"crop_scale": (0.5,)},
        {"crop_scale": "0.2"},
        {"crop_scale": (0.2, "1")},
        {"jitter_p": 1.5},
        {"jitter_p": -0.1},
        {"grayscale_p": 2},
        {"blur_p": -1.0},
        {"solarize_p": 1.01},
        {"jitter_p": True},
        {"jitter_strength": -0.5},
        {"jitter_strength": 3.0},
    ],
)
def test_bad_augmentation_options_are_config_errors(kwargs):
    key = next(iter(kwargs))
    with pytest.raises(ConfigError, match=rf"^data\.augment\.{key} must be"):
        ViewAugment(32, **kwargs)


@pytest.mark.parametrize("size", [4, 32.0, True])
def test_bad_image_size_is_a_config_error(size):
    for cls in (ViewAugment, EvalTransform):
        with pytest.raises(ConfigError, match=r"^data\.image_size must be an integer >= 8"):
            cls(size)


@pytest.mark.parametrize("s", [1.0, 0.5])
def test_colour_jitter_uses_08s_08s_08s_02s_in_torchvision_convention(s):
    (jitter,) = ops_of(ViewAugment(32, jitter_strength=s, jitter_p=1.0), K.ColorJitter)
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == pytest.approx(
        (0.8 * s,) * 3 + (0.2 * s,)
    )
    # Behaviour on flat gray images: contrast, saturation and hue leave them unchanged, so out / in is the
    # brightness factor. torchvision's convention: multiply by a factor drawn from [1 - 0.8s, 1 + 0.8s]
    # (an additive brightness would push the darkest level to 0).
    torch.manual_seed(0)
    levels = torch.tensor([0.1, 0.3, 0.5]).repeat(300)  # (900,)
    flat = levels.view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()
    out = jitter(flat)
    assert (out - out[:, :1, :1, :1]).abs().max() < 1e-5  # still flat and gray
    factor = out[:, 0, 0, 0] / levels
    lo, hi = 1 - 0.8 * s, 1 + 0.8 * s
    for level in (0.1, 0.3, 0.5):
        f = factor[levels == level]
        assert f.min() >= lo - 1e-4 and f.max() <= hi + 1e-4
        assert f.min() < lo + 0.05 and f.max() > hi - 0.05  # the whole range is drawn
        assert abs(float(f.mean()) - 1.0) < 0.1
    params = jitter._params
    for key in ("contrast_factor", "saturation_factor"):
        assert params[key].min() >= lo - 1e-6 and params[key].max() <= hi + 1e-6
    assert params["hue_factor"].abs().max() <= 0.2 * s + 1e-6 and params["hue_factor"].abs().max() > 0.15 * s


def test_jitter_and_grayscale_switched_off():
    view = ViewAugment(32, jitter_strength=0.0, grayscale_p=0.0, hflip=False)
    assert not ops_of(view, K.ColorJitter) and not ops_of(view, K.RandomGrayscale)
    assert not ops_of(view, K.RandomHorizontalFlip)


def test_eval_transform_normalises_images_of_the_right_size_exactly():
    x = batch(h=32, w=32)
    want = (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    for center_crop in (False, True):
        out = EvalTransform(32, center_crop=center_crop, mean=MEAN, std=STD)(x)
        assert out.dtype == torch.float32 and torch.allclose(out, want, atol=1e-6)
        # float input in [0, 1] is the same image
        assert torch.allclose(EvalTransform(32, center_crop=center_crop, mean=MEAN, std=STD)(x.float() / 255), want)


def test_eval_transform_centre_crop_versus_resize():
    framed = torch.zeros(2, 3, 48, 48, dtype=torch.uint8)
    framed[..., :8, :] = framed[..., -8:, :] = framed[..., :, :8] = framed[..., :, -8:] = 255
    crop = unnormalise(EvalTransform(32, center_crop=True, mean=MEAN, std=STD)(framed))
    assert crop.shape == (2, 3, 32, 32) and crop.abs().max() < 1e-5  # the centre 32x32 is the black inside
    resized = unnormalise(EvalTransform(32, mean=MEAN, std=STD)(framed))
    assert resized.shape == (2, 3, 32, 32)
    assert resized[..., 0, :].min() > 0.9 and resized[..., 16, 16].max() < 0.1  # the frame shrinks, stays

    # a non-square image is resized to the square; with centre-cropping, a smaller image is enlarged first
    assert EvalTransform(32)(batch(h=20, w=60)).shape == (8, 3, 32, 32)
    small = torch.full((2, 3, 20, 26), 100, dtype=torch.uint8)
    out = unnormalise(EvalTransform(32, center_crop=True, mean=MEAN, std=STD)(small))
    assert out.shape == (2, 3, 32, 32) and torch.allclose(out, torch.full_like(out, 100 / 255), atol=1e-4)


def test_transforms_run_on_the_device_of_their_input():
    device = torch.device("cpu")
    view, ev = ViewAugment(32), EvalTransform(32, center_crop=True)
    assert not list(view.parameters()) and not list(view.buffers())  # nothing pinned to a device
    x = batch().to(device)
    assert view(x).device == device and ev(x).device == device
