"""Views cut from the original image (cssl.data.views): box sampling, decoders, multi-crop, device decode."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from cssl.data.views import (
    ViewSpec,
    cut_views,
    decode_image,
    decode_on_device,
    decode_views,
    draft_reduction,
    sample_box,
    sample_boxes,
)


def encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None, **options) -> bytes:
    """(H, W, 3) uint8 -> bytes of a real file (``mode`` converts first: "CMYK", "L")."""
    image = Image.fromarray(array, "RGB")
    if mode:
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus mild noise (JPEG-friendly, not flat)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 200 / width, yy * 200 / height, (xx + yy) * 100 / (height + width)], -1) + 30
    return np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


def pil_rgb(data: bytes) -> torch.Tensor:
    """(3, H, W) uint8: PIL's own RGB decode (the reference)."""
    return torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()).permute(2, 0, 1)


# -- crop boxes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "scale"),
    [(375, 500, (0.08, 1.0)), (500, 375, (0.2, 1.0)), (32, 400, (0.5, 1.0)), (300, 20, (0.9, 1.0)), (7, 9, (0.08, 1))],
)
def test_boxes_are_torchvisions_for_the_same_seed(height, width, scale):
    # torchvision's get_params needs an image; a zero-stride tensor of the size stands in for it
    stand_in = torch.empty(()).expand(3, height, width)
    for seed in range(40):
        torch.manual_seed(seed)
        want = RandomResizedCrop.get_params(stand_in, list(scale), [3 / 4, 4 / 3])
        torch.manual_seed(seed)
        assert sample_box(height, width, scale) == tuple(want), seed


def test_box_scale_and_log_ratio_follow_the_uniform_laws():
    # On a square image with scale <= 0.5, no draw is ever rejected: area share ~ U(0.08, 0.5) and
    # log(w / h) ~ U(log 3/4, log 4/3) up to rounding to whole pixels (tiny at 2000 px)
    g = torch.Generator().manual_seed(0)
    side, lo, hi = 2000, 0.08, 0.5
    boxes = np.array([sample_box(side, side, (lo, hi), generator=g) for _ in range(3000)])
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= side).all() and (left + w <= side).all()
    area = h * w / side**2
    log_ratio = np.log(w / h)
    assert stats.kstest(area, stats.uniform(lo, hi - lo).cdf).pvalue > 0.01
    a, b = math.log(3 / 4), math.log(4 / 3)
    assert stats.kstest(log_ratio, stats.uniform(a, b - a).cdf).pvalue > 0.01
    # the position is uniform over the free range: the box centre's mean is the image centre
    assert abs((left + w / 2).mean() / side - 0.5) < 0.02 and abs((top + h / 2).mean() / side - 0.5) < 0.02
    # a law the sampler does not follow is rejected by the same test (the test can fail)
    assert stats.kstest(np.sqrt(area), stats.uniform(lo, hi - lo).cdf).pvalue < 0.01


def test_views_of_a_non_square_image_reach_its_corners():
    # 2:1 image, grey, with a coloured 8x8 patch in each corner
    height, width = 60, 120
    array = np.full((height, width, 3), 128, np.uint8)
    corners = {
        (0, 0): (255, 0, 0),
        (0, width - 8): (0, 255, 0),
        (height - 8, 0): (0, 0, 255),
        (height - 8, width - 8): (255, 255, 0),
    }
    for (r, c), color in corners.items():
        array[r : r + 8, c : c + 8] = color
    data = encode(array)
    torch.manual_seed(0)
    seen = dict.fromkeys(corners.values(), 0)
    for _ in range(200):
        (view,) = decode_views(data, [ViewSpec(16, (0.08, 1.0))])
        pixels = view.reshape(3, -1).T.int()  # (S*S, 3)
        for color in seen:
            seen[color] += bool(((pixels - torch.tensor(color)).abs().max(1).values < 60).any())
    assert all(count >= 5 for count in seen.values()), seen


def test_multicrop_views_have_their_sizes_and_count_and_scales():
    array = textured(90, 120)
    data = encode(array)
    views = [ViewSpec(32, (0.5, 1.0))] * 2 + [ViewSpec(12, (0.05, 0.2))] * 4
    out = decode_views(data, views)
    assert [tuple(v.shape) for v in out] == [(3, 32, 32)] * 2 + [(3, 12, 12)] * 4
    assert all(v.dtype == torch.uint8 for v in out)
    # each view's boxes follow its own scale range
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        boxes = sample_boxes(90, 120, views, g)
        areas = [h * w / (90 * 120) for _, _, h, w in boxes]
        assert all(0.45 <= a <= 1.0 for a in areas[:2]) and all(0.04 <= a <= 0.22 for a in areas[2:])


def test_views_are_antialiased_resized_crops_of_the_original():
    array = textured(75, 100, seed=3)
    data = encode(array)  # PNG: lossless, so the reference is exact
    views = [ViewSpec(24, (0.3, 1.0)), ViewSpec(10, (0.1, 0.4))]
    torch.manual_seed(5)
    out = decode_views(data, views)
    torch.manual_seed(5)
    boxes = sample_boxes(75, 100, views)
    image = torch.from_numpy(array).permute(2, 0, 1)
    for view, (top, left, h, w), spec in zip(out, boxes, views, strict=True):
        want = TF.resized_crop(image, top, left, h, w, [spec.size, spec.size], antialias=True)
        assert (view.int() - want.int()).abs().max() <= 1


# -- decoders ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mode", "tolerance"),
    [("PNG", None, 0), ("PNG", "L", 0), ("JPEG", "CMYK", 0), ("JPEG", "L", 0), ("JPEG", None, 3)],
)
def test_decoders_give_rgb_of_the_file(fmt, mode, tolerance):
    # PNG, CMYK and grayscale JPEGs go to PIL (exact); RGB JPEGs to decode_jpeg (libjpeg-turbo: within a
    # few levels of PIL's decode of the same file, whose IDCT may differ)
    data = encode(textured(40, 56), fmt, mode, **({"quality": 90} if fmt == "JPEG" else {}))
    out = decode_image(data)
    assert out.shape == (1, 3, 40, 56) and out.dtype == torch.uint8
    assert (out[0].int() - pil_rgb(data).int()).abs().max() <= tolerance
    if mode == "L":
        assert torch.equal(out[0, 0], out[0, 1]) and torch.equal(out[0, 0], out[0, 2])


def test_unreadable_files_raise():
    data = encode(textured(40, 56), "JPEG", quality=90)
    for bad in (data[: len(data) // 2], b"not an image at all" * 10):
        with pytest.raises((OSError, RuntimeError, ValueError)):
            decode_views(bad, [ViewSpec(16)])


def test_draft_decodes_large_jpegs_at_a_dct_scale_when_every_box_allows_it():
    views = [ViewSpec(32), ViewSpec(16)]
    assert draft_reduction([(0, 0, 300, 260), (0, 0, 130, 200)], views) == 8
    assert draft_reduction([(0, 0, 300, 260), (0, 0, 60, 200)], views) == 2  # 60 / 16 < 4
    assert draft_reduction([(0, 0, 40, 40), (0, 0, 60, 60)], views) == 1
    height, width = 601, 803  # odd sides: the DCT scale rounds up, the draft request must use floors
    data = encode(textured(height, width, seed=2), "JPEG", quality=92)
    boxes = [(10, 20, 560, 700), (100, 50, 300, 400)]
    reduced = decode_image(data, boxes, views)
    assert reduced.shape[-2:] == (math.ceil(height / 8), math.ceil(width / 8))
    full = decode_image(data)
    assert full.shape[-2:] == (height, width)
    small = cut_views(reduced, boxes, views, (height, width))
    exact = cut_views(full, boxes, views, (height, width))
    for a, b in zip(small, exact, strict=True):
        assert (a.float() - b.float()).abs().mean() < 4


# -- the device decoder (run on the CPU device here) ------------------------------------------------


def test_device_decode_cuts_the_same_views_and_falls_back_per_refused_file():
    views = [ViewSpec(20, (0.2, 1.0)), ViewSpec(8, (0.05, 0.3))]
    arrays = [textured(48, 64, seed=s) for s in range(4)]
    files = [
        encode(arrays[0], "JPEG", quality=90),
        encode(arrays[1], "PNG"),  # refused by decode_jpeg although marked for it: CPU fallback
        encode(arrays[2], "JPEG", quality=90)[:400],  # truncated: no decoder reads it
        encode(arrays[3], "JPEG", "CMYK"),  # not marked for the device decoder
    ]
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([sample_boxes(48, 64, views, g) for _ in files])  # (B, V, 4)
    out, bad = decode_on_device(files, boxes, views, "cpu", torch.tensor([True, True, True, False]))
    assert [tuple(v.shape) for v in out] == [(4, 3, 20, 20), (4, 3, 8, 8)]
    assert bad.tolist() == [False, False, True, False]
    for i in (0, 1, 3):
        want = cut_views(pil_rgb(files[i]).unsqueeze(0), boxes[i].tolist(), views, (48, 64))
        for v, w in zip(out, want, strict=True):
            assert (v[i].int() - w.int()).abs().max() <= 4, i
    # the batched call (all files readable) gives the same views as file-by-file decoding
    again, bad = decode_on_device([files[0], files[0]], boxes[:2], views, "cpu")
    assert not bad.any() and torch.equal(again[0][0], out[0][0])


# -- wiring: the device part skips its crop; the views follow the config ------------------------------


def test_view_augment_without_crop_keeps_the_worker_views_geometry():
    from cssl.data import ViewAugment

    x = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    plain = ViewAugment(24, crop=False, hflip=False, jitter_strength=0, grayscale_p=0, blur_p=0, mean=mean, std=std)
    want = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(plain(x), want, atol=1e-5)  # no crop: only the photometric part (here none)
    cropped = ViewAugment(24, hflip=False, jitter_strength=0, grayscale_p=0, blur_p=0, mean=mean, std=std)
    assert not torch.allclose(cropped(x), want, atol=1e-2)


def test_view_specs_follow_the_transforms_order_and_the_config():
    from cssl.data.plan import ViewPlan

    augment = {"crop_scale": [0.2, 1.0], "blur_p": 0.0}
    multicrop = {"sizes": [24, 16], "scales": [[0.14, 1.0], [0.05, 0.4]]}
    plan = ViewPlan(augment=augment, multicrop=multicrop)
    specs = plan.specs(32)
    assert specs == [
        ViewSpec(32, (0.2, 1.0)),
        ViewSpec(32, (0.2, 1.0)),
        ViewSpec(24, (0.14, 1.0)),
        ViewSpec(16, (0.05, 0.4)),
    ]
    photometric = plan.transform(32, (0.5,) * 3, (0.5,) * 3, crop=False)
    views = [torch.zeros(2, 3, s.size, s.size, dtype=torch.uint8) for s in specs]
    assert [tuple(a(v).shape[-2:]) for a, v in zip(photometric.views, views, strict=True)] == [
        (s.size, s.size) for s in specs
    ]
    assert ViewPlan(augment=augment).specs(32) == [ViewSpec(32, (0.2, 1.0))] * 2
