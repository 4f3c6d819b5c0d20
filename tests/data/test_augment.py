"""On-device augmentation: shapes, ranges, randomness, validation; the antialiased crop, the crop boxes, the
per-image colour jitter and the blur against torchvision's own transforms on the same parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from cssl.core.errors import ConfigError
from cssl.data import EvalTransform, MultiView, ViewAugment
from cssl.data.augment import (
    ColorJitter,
    GaussianBlur,
    RandomResizedCrop,
    blur_kernel_size,
    resized_crop,
    sample_crop_boxes,
)
from tests.conftest import same

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def batch(b: int = 8, h: int = 40, w: int = 50, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


def plain_view(size: int, **kwargs) -> ViewAugment:
    """A view with only what ``kwargs`` switch on, and no normalisation (outputs in [0, 1])."""
    options = {"jitter_strength": 0.0, "grayscale_p": 0.0, "blur_p": 0.0, "hflip": False, **kwargs}
    return ViewAugment(size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), **options)


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
        assert ViewAugment(size).blur is None
    for size, kernel in ((96, 9), (224, 23)):
        blur = ViewAugment(size).blur
        assert isinstance(blur, GaussianBlur) and blur.p == 0.5 and blur.kernel_size == kernel
        assert blur.sigma == (0.1, 2.0)
    assert ViewAugment(32, blur_p=1.0).blur.p == 1.0
    assert ViewAugment(224, blur_p=0.0).blur is None


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
        {"hflip": "yes"},
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
    jitter = ViewAugment(32, jitter_strength=s, jitter_p=1.0).jitter
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == pytest.approx(
        (0.8 * s,) * 3 + (0.2 * s,)
    )
    # Behaviour on flat gray images: contrast, saturation and hue leave them unchanged, so out / in is the
    # brightness factor. torchvision's convention: multiply by a factor drawn from [1 - 0.8s, 1 + 0.8s]
    # (an additive brightness would push the darkest level to 0).
    torch.manual_seed(0)
    levels = torch.tensor([0.1, 0.3, 0.5]).repeat(300)  # (900,)
    flat = levels.view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()
    params = jitter.sample(len(levels))
    out = jitter.apply(flat, params)
    assert (out - out[:, :1, :1, :1]).abs().max() < 1e-5  # still flat and gray
    factor = out[:, 0, 0, 0] / levels
    lo, hi = 1 - 0.8 * s, 1 + 0.8 * s
    for level in (0.1, 0.3, 0.5):
        f = factor[levels == level]
        assert f.min() >= lo - 1e-4 and f.max() <= hi + 1e-4
        assert f.min() < lo + 0.05 and f.max() > hi - 0.05  # the whole range is drawn
        assert abs(float(f.mean()) - 1.0) < 0.1
    # the brightness factor (contrast and saturation move gray by 1e-4 at most: the luma weights sum to 0.9999)
    assert torch.allclose(factor, params["factors"][:, 0], atol=1e-3)
    for column in (1, 2):
        values = params["factors"][:, column]
        assert values.min() >= lo - 1e-6 and values.max() <= hi + 1e-6 and values.min() < lo + 0.05
    hue = params["hue"].abs()
    assert hue.max() <= 0.2 * s + 1e-6 and hue.max() > 0.15 * s


def test_jitter_and_grayscale_switched_off():
    view = ViewAugment(32, jitter_strength=0.0, grayscale_p=0.0, hflip=False)
    assert view.jitter is None and view.grayscale_p == 0 and view.hflip_p == 0
    assert ViewAugment(32, jitter_p=0.0).jitter is None
    assert ViewAugment(32).hflip_p == 0.5


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


# -- the antialiased crop --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64])
def test_antialiased_crop_equals_torchvision_resized_crop_on_the_same_boxes(size):
    """Downscaled boxes (96 px -> 32 px: STL-10's recipe) and mixed up/downscaling (64 px), flipped or not."""
    torch.manual_seed(0)
    images = torch.rand(24, 3, 96, 80)  # (B, 3, H, W) float in [0, 1]
    boxes = sample_crop_boxes(24, 96, 80, scale=(0.08, 1.0), device="cpu")  # (B, 4)
    flip = torch.arange(24) % 2 == 1
    out = resized_crop(images, boxes, size, flip)
    assert out.shape == (24, 3, size, size)
    for i in range(24):
        top, left, h, w = (int(v) for v in boxes[i])
        want = TF.resized_crop(images[i], top, left, h, w, [size, size], antialias=True)
        want = TF.horizontal_flip(want) if flip[i] else want
        assert (out[i] - want).abs().max() < 1e-5, (i, boxes[i])
    # the test can tell: a plain bilinear crop (what kornia's crop does) misses it by far at 3x downscale
    top, left, h, w = 0, 0, 96, 80
    plain = F.interpolate(images[:1, :, top : top + h, left : left + w], size=(size, size), mode="bilinear")
    ours = resized_crop(images[:1], torch.tensor([[top, left, h, w]]), size)
    assert (plain - ours).abs().max() > 0.05 * (96 / size)


def test_uint8_images_crop_like_torchvision_within_one_level():
    torch.manual_seed(1)
    images = torch.randint(0, 256, (8, 3, 96, 96), dtype=torch.uint8)
    boxes = sample_crop_boxes(8, 96, 96, device="cpu")
    out = resized_crop(images, boxes, 32) * 255  # uint8 in, [0, 1] out
    for i in range(8):
        top, left, h, w = (int(v) for v in boxes[i])
        want = TF.resized_crop(images[i], top, left, h, w, [32, 32], antialias=True)  # torchvision's uint8 kernel
        assert (out[i].round() - want.float()).abs().max() <= 1


def test_a_3x_downscale_of_a_one_pixel_checkerboard_is_near_uniform_grey():
    rows, cols = torch.meshgrid(torch.arange(96), torch.arange(96), indexing="ij")
    board = ((rows + cols) % 2 * 255).to(torch.uint8).expand(4, 3, 96, 96).contiguous()  # (4, 3, 96, 96)
    torch.manual_seed(0)
    view = plain_view(32, crop_scale=(1.0, 1.0))  # the whole image: a 3x downscale
    grey = view(board) * 255  # (4, 3, 32, 32)
    assert grey.std() < 30 and abs(float(grey.mean()) - 127.5) < 3
    # without antialiasing the checkerboard aliases into a pattern of far larger spread
    aliased = F.interpolate(board.float(), size=(32, 32), mode="bilinear", antialias=False)
    assert aliased.std() > 60


def test_crop_boxes_follow_torchvision_sampling_distribution():
    """Two-sample Kolmogorov-Smirnov tests of area fraction and log aspect ratio (and position) against
    torchvision's RandomResizedCrop.get_params, on a square and on a 5:2 image (where a third of the boxes
    are the central fallback)."""
    n = 2000
    for height, width, scale in ((96, 96, (0.08, 1.0)), (40, 100, (0.3, 1.0))):
        torch.manual_seed(0)
        ours = sample_crop_boxes(n, height, width, scale=scale).double().numpy()  # (n, 4)
        image = torch.zeros(1, height, width)
        theirs = np.array(
            [T.RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3]) for _ in range(n)], dtype=float
        )  # (n, 4) top, left, h, w
        assert (ours[:, 0] >= 0).all() and (ours[:, 0] + ours[:, 2] <= height).all()
        assert (ours[:, 1] >= 0).all() and (ours[:, 1] + ours[:, 3] <= width).all()
        assert (ours == ours.round()).all()  # whole pixels
        area = float(height * width)
        for name, of in (
            ("area", lambda b, area=area: b[:, 2] * b[:, 3] / area),
            ("log ratio", lambda b: np.log(b[:, 3] / b[:, 2])),
            ("centre row", lambda b: b[:, 0] + b[:, 2] / 2),
            ("centre column", lambda b: b[:, 1] + b[:, 3] / 2),
        ):
            result = stats.ks_2samp(of(ours), of(theirs))
            assert result.pvalue > 1e-3, (height, width, name, result)
        # and the test can tell: a sampler with a uniform (not log-uniform) ratio is rejected
        skewed = np.log(np.random.default_rng(0).uniform(3 / 4, 4 / 3, n))
        if height == width:
            assert stats.ks_2samp(np.log(ours[:, 3] / ours[:, 2]), skewed).pvalue < 1e-3
    # the central fallback: an 8:1 strip cannot hold any box of ratio <= 4/3 at scale 0.9, so every box is the
    # torchvision fallback, its largest central 4:3 box
    boxes = sample_crop_boxes(5, 10, 80, scale=(0.9, 1.0))
    want = T.RandomResizedCrop.get_params(torch.zeros(1, 10, 80), [0.9, 1.0], [3 / 4, 4 / 3])
    assert boxes.tolist() == [list(map(float, want))] * 5


def test_random_resized_crop_keeps_its_scale_in_the_repr():
    view = ViewAugment(32, crop_scale=(0.05, 0.4))
    assert isinstance(view.ops[0], RandomResizedCrop) and "scale=(0.05, 0.4)" in repr(view.ops[0])


# -- colour jitter, grayscale, blur, solarisation, flip: per image ------------------------------------------


def torchvision_jitter(image: torch.Tensor, params: dict, i: int) -> torch.Tensor:
    """Image i jittered by torchvision's functional ops in the sampled order with the sampled parameters."""
    if not params["applied"][i]:
        return image
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for op in params["order"][i].tolist():
        value = params["hue"][i] if op == 3 else params["factors"][i, op]
        image = ops[op](image, float(value))
    return image


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_colour_jitter_equals_torchvision_per_image(seed):
    torch.manual_seed(seed)
    images = torch.randint(0, 256, (64, 3, 12, 12), dtype=torch.uint8).float() / 255  # (B, 3, H, W)
    images[:4] = images[:4, :1]  # some gray images (zero chroma), as after grayscale
    jitter = ColorJitter(0.8, 0.8, 0.8, 0.2, p=0.8)
    params = jitter.sample(64)
    out = jitter.apply(images, params)
    assert not torch.equal(out, images)
    for i in range(64):
        want = torchvision_jitter(images[i], params, i)
        assert (out[i] - want).abs().max() < 1e-4, i
        assert ((out[i] * 255).round() - (want * 255).round()).abs().max() <= 1  # to uint8 rounding
    # every order of the four operations, per image (kornia drew one per batch)
    orders = {tuple(o) for o in params["order"].tolist()}
    assert len(orders) > 10
    assert 0.6 < params["applied"].float().mean() < 0.95


def test_jitter_orders_are_uniform_permutations_per_image():
    torch.manual_seed(0)
    order = ColorJitter(0.4, 0.4, 0.4, 0.1).sample(4800)["order"]  # (B, 4)
    assert (order.sort(dim=1).values == torch.arange(4)).all()  # permutations
    counts = torch.zeros(4, 4)
    for slot in range(4):
        counts[slot] = torch.bincount(order[:, slot], minlength=4)
    assert stats.chisquare(counts.flatten().numpy()).pvalue > 1e-3
    assert len({tuple(o) for o in order.tolist()}) == 24


def test_blur_equals_torchvision_gaussian_blur_per_image():
    torch.manual_seed(0)
    images = torch.rand(6, 3, 20, 20)
    blur = GaussianBlur(9, sigma=(0.1, 2.0), p=0.5)
    params = blur.sample(6)
    params["applied"] = torch.tensor([True, False] * 3)
    out = blur.apply(images, params)
    for i in range(6):
        sigma = float(params["sigma"][i])
        want = TF.gaussian_blur(images[i], [9, 9], [sigma, sigma]) if params["applied"][i] else images[i]
        assert (out[i] - want).abs().max() < 1e-5


def test_grayscale_flip_and_solarisation_are_per_image():
    torch.manual_seed(0)
    images = torch.rand(64, 3, 16, 16)  # the whole-image crop at the same size is the identity
    assert torch.allclose(plain_view(16, crop_scale=(1.0, 1.0))(images), images, atol=1e-6)
    out = plain_view(16, crop_scale=(1.0, 1.0), hflip=True)(images)
    flipped = same(out, images.flip(-1))
    kept = same(out, images)
    assert (flipped | kept).all() and 10 < flipped.sum() < 54
    out = plain_view(16, crop_scale=(1.0, 1.0), grayscale_p=0.5)(images)
    gray = (images * torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True).expand_as(images)
    grayed = same(out, gray)
    kept = same(out, images)
    assert (grayed | kept).all() and 10 < grayed.sum() < 54
    out = plain_view(16, crop_scale=(1.0, 1.0), solarize_p=0.5)(images)
    solar = torch.where(images >= 0.5, 1 - images, images)  # torchvision's solarize at threshold 0.5
    solarised = same(out, solar)
    kept = same(out, images)
    assert (solarised | kept).all() and 10 < solarised.sum() < 54


def test_views_cut_beforehand_skip_the_crop():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 24, 24), dtype=torch.uint8)
    view = plain_view(24, crop=False, hflip=True)
    assert view.crop is None and not any(isinstance(op, RandomResizedCrop) for op in view.ops)
    out = view(images)
    x = images.float() / 255
    flipped = same(out, x.flip(-1), 0.0)
    kept = same(out, x, 0.0)
    assert (flipped | kept).all() and flipped.any() and kept.any()
    full = ViewAugment(24, crop=False, blur_p=1.0, solarize_p=0.5)(images)  # photometry still applies
    assert full.shape == (32, 3, 24, 24) and full.dtype == torch.float32
    with pytest.raises(ValueError, match=r"views cut beforehand must be 24x24, got \(32, 32\)"):
        view(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="crop must be true or false"):
        ViewAugment(24, crop="no")


@pytest.mark.parametrize("crop", [True, False])
def test_views_are_reproducible_from_torchs_global_generator(crop):
    """Resume exactness: the views depend only on torch's global generator, whose state checkpoints save."""
    images = batch(b=16, h=32, w=32)
    view = ViewAugment(32, crop=crop, blur_p=0.5, solarize_p=0.5)
    torch.manual_seed(123)
    first = view(images)
    state = torch.get_rng_state()
    second = view(images)
    torch.manual_seed(123)
    assert torch.equal(view(images), first)
    torch.set_rng_state(state)
    assert torch.equal(view(images), second)
    assert not torch.equal(first, second)


@pytest.mark.parametrize("crop", [True, False])
def test_chunked_views_on_a_cpu_equal_whole_batch_views(crop, monkeypatch):
    """On a CPU the batch is processed in cache-sized chunks; per-image parameters make that exact."""
    import cssl.data.augment as augment

    images = batch(b=10, h=32, w=32)
    view = ViewAugment(32, crop=crop, blur_p=0.5, solarize_p=0.5)
    torch.manual_seed(7)
    whole = view(images)
    monkeypatch.setattr(augment, "CPU_CHUNK_ELEMENTS", 3 * 3 * 32 * 32)  # chunks of 3 images: 3 + 3 + 3 + 1
    torch.manual_seed(7)
    assert torch.allclose(view(images), whole, atol=1e-5)
