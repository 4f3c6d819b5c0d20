"""Batched augmentation on the accelerator.

Loaders only decode and collate uint8 images; these modules turn a (B, 3, H, W) uint8 batch that is
already on the device into normalised float views. Every random choice is made per image, as torchvision's
per-sample transforms make it, but for the whole batch at once (no Python loop over images, no host
synchronisation) and from torch's global generator of the batch's device, which checkpoints save: a resumed
run draws the same views as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import kornia.augmentation as K
import torch
import torch.nn as nn
import torch.nn.functional as F
from kornia.geometry.transform import resize
from torch import Tensor

from cssl.core.errors import check, check_unit_interval, is_int, is_number

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2 luma)


def blur_kernel_size(image_size: int) -> int:
    """SimCLR's blur kernel: 10% of the side, made odd (at least 3).

    >>> blur_kernel_size(224), blur_kernel_size(96), blur_kernel_size(32)
    (23, 9, 3)
    """
    return max(3, int(0.1 * image_size) // 2 * 2 + 1)


def check_image_size(image_size: int) -> None:
    check(
        is_int(image_size) and image_size >= 8,
        f"data.image_size must be an integer >= 8, got {image_size!r}",
    )


# -- geometry: random resized crop with antialiasing, batched over boxes of different sizes ----------------


def sample_crop_boxes(
    batch: int,
    height: int,
    width: int,
    *,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    device: torch.device | str = "cpu",
) -> Tensor:
    """Random resized crop boxes: torchvision's ``RandomResizedCrop.get_params``, drawn for every image.

    Per image: up to 10 tries of an area fraction uniform in ``scale`` and an aspect ratio log-uniform in
    ``ratio``, rounded to whole pixels; the first try that fits is kept, else torchvision's central fallback
    (the whole image, or its largest central box within ``ratio``). The 10 tries are drawn at once.

    Returns:
        (B, 4) float boxes ``(top, left, h, w)`` in whole pixels.
    """
    area = float(height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    u = torch.rand(batch, 10, 4, device=device)  # (B, 10, 4): area, log-ratio, top, left
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])  # (B, 10)
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])  # (B, 10)
    w = torch.sqrt(target * aspect).round()  # (B, 10), half to even like Python's round
    h = torch.sqrt(target / aspect).round()  # (B, 10)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # (B, 10)
    top = torch.floor(u[..., 2] * (height - h + 1))  # (B, 10) uniform over 0 .. height - h
    left = torch.floor(u[..., 3] * (width - w + 1))  # (B, 10)
    tries = torch.stack([top, left, h, w], dim=-1)  # (B, 10, 4)
    first = fits.to(torch.uint8).argmax(dim=1)  # (B,) the first try that fits (0 if none)
    chosen = tries[torch.arange(batch, device=tries.device), first]  # (B, 4)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    fallback = torch.tensor([(height - fh) // 2, (width - fw) // 2, fh, fw], dtype=tries.dtype, device=tries.device)
    return torch.where(fits.any(dim=1, keepdim=True), chosen, fallback)  # (B, 4)


def resample_weights(start: Tensor, length: Tensor, in_size: int, out_size: int, flip: Tensor | None = None) -> Tensor:
    """Antialiased 1-D resampling matrices from a window of an axis to ``out_size`` samples.

    The weights of torchvision's (and PIL's, and torch's ``antialias=True``) bilinear resize: a triangle
    filter whose support widens by the downscale factor, clipped to the window and normalised. Upscaling,
    this is plain bilinear interpolation (``align_corners=False``, edges clamped).

    Args:
        start: (B,) first pixel of each window; length: (B,) its length in pixels (whole numbers).
        in_size: length of the axis; out_size: samples out.
        flip: optional (B,) bool: reverse those images' outputs (a horizontal flip at no cost).

    Returns:
        (B, out_size, in_size) weights; each row sums to 1.
    """
    device = start.device
    scale = length / out_size  # (B,) input pixels per output pixel
    support = scale.clamp(min=1.0)  # (B,) triangle radius: 1 pixel, wider when downscaling
    out_pos = torch.arange(out_size, device=device, dtype=torch.float32) + 0.5  # (S,)
    center = start[:, None] + out_pos * scale[:, None]  # (B, S) in input pixels
    in_pos = torch.arange(in_size, device=device, dtype=torch.float32) + 0.5  # (N,)
    dist = (in_pos - center[:, :, None]).abs_().div_(support[:, None, None])  # (B, S, N)
    weights = dist.neg_().add_(1.0).clamp_(min=0.0)  # (B, S, N) triangle
    inside = (in_pos > start[:, None]) & (in_pos < (start + length)[:, None])  # (B, N) the window
    weights = weights.mul_(inside.to(weights.dtype)[:, None, :])
    weights = weights.div_(weights.sum(dim=-1, keepdim=True))
    if flip is not None:
        weights = torch.where(flip[:, None, None], weights.flip(1), weights)
    return weights


def resized_crop(
    x: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None, *, out: Tensor | None = None
) -> Tensor:
    """Crop every image to its own box and resize it to ``size`` with antialiasing, as two batched matmuls.

    Args:
        x: (B, C, H, W) uint8 (scaled to [0, 1]) or float images.
        boxes: (B, 4) ``(top, left, h, w)`` in whole pixels (e.g. from :func:`sample_crop_boxes`).
        size: output side.
        flip: optional (B,) bool: mirror those views horizontally.
        out: optional (B, C, size, size) float32 tensor to write into.

    Returns:
        (B, C, size, size) float32; for float input it equals torchvision's
        ``resized_crop(x, top, left, h, w, [size, size], antialias=True)`` per image (to float rounding).

    ``torchvision.ops.roi_align(..., sampling_ratio=-1, aligned=True)`` would also batch boxes of different
    sizes, but its box filter only approximates torchvision's resize (35-41 dB); these weights are the same.
    """
    b, c, height, width = x.shape
    top, left, h, w = boxes.to(torch.float32).unbind(dim=1)  # (B,) each
    rows = resample_weights(top, h, height, size)  # (B, S, H)
    cols = resample_weights(left, w, width, size, flip)  # (B, S, W)
    if x.dtype == torch.uint8:
        rows = rows.mul_(1.0 / 255.0)  # the scaling to [0, 1] comes for free
    # rows of all channels side by side, so that each contraction is one matmul per image (not per channel)
    xt = torch.empty(b, height, c, width, device=x.device).copy_(x.permute(0, 2, 1, 3))  # (B, H, C, W) float
    half = torch.bmm(xt.view(b, height * c, width), cols.transpose(1, 2))  # (B, H C, S)
    full = torch.bmm(rows, half.view(b, height, c * size)).view(b, size, c, size)  # (B, S, C, S)
    out = torch.empty(b, c, size, size, device=x.device) if out is None else out
    return out.copy_(full.permute(0, 2, 1, 3))  # (B, C, S, S)


class RandomResizedCrop(nn.Module):
    """torchvision's RandomResizedCrop per image (:func:`sample_crop_boxes`), resampled with antialiasing
    (:func:`resized_crop`): downscaled views average their source pixels instead of aliasing."""

    def __init__(
        self, size: int, scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3)
    ) -> None:
        super().__init__()
        self.size = size
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    def extra_repr(self) -> str:
        return f"size={self.size}, scale={self.scale}, ratio=({self.ratio[0]:.4g}, {self.ratio[1]:.4g})"

    def sample(self, x: Tensor) -> Tensor:
        """(B, 4) boxes ``(top, left, h, w)`` for the images of ``x``."""
        b, _, h, w = x.shape
        return sample_crop_boxes(b, h, w, scale=self.scale, ratio=self.ratio, device=x.device)

    def forward(self, x: Tensor, flip: Tensor | None = None) -> Tensor:
        """(B, C, H, W) uint8 or float -> (B, C, S, S) float in [0, 1] (for uint8 or [0, 1] input)."""
        return resized_crop(x, self.sample(x), self.size, flip)


# -- photometry ----------------------------------------------------------------------------------------------


def grayscale(x: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma with torchvision's weights."""
    r, g, b = x.unbind(dim=1)
    return (r * GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)


def adjust_hue_(x: Tensor, hue: Tensor) -> Tensor:
    """Rotate every image's hue by its own ``hue`` (B,) in [-0.5, 0.5], in place, as torchvision's adjust_hue.

    The hue comes from RGB as in torchvision's ``_rgb_to_hsv`` (in sextants: (g - b) / C where red is the
    largest channel, 2 + (b - r) / C where green is, else 4 + (r - g) / C, with C = max - min); the way back is
    the closed form ``c = max - C * clamp(2 - |k - 2|, 0, 1)``, ``k = (n + 6 H) mod 6`` with n = 5, 3, 1 for
    r, g, b, which equals the sector table of ``_hsv_to_rgb`` (V and S are kept). Branch-free and in place:
    on a CPU every fresh buffer costs page faults. (B, 3, H, W) float in [0, 1].
    """
    r, g, b = x.unbind(dim=1)  # (B, H, W) views
    maxc = torch.maximum(r, g)
    torch.maximum(maxc, b, out=maxc)
    chroma = torch.minimum(r, g)
    torch.minimum(chroma, b, out=chroma)
    chroma.neg_().add_(maxc)  # max - min
    is_r = maxc.eq(r).to(x.dtype)  # (B, H, W) red is the largest (torchvision's first choice)
    is_g = maxc.eq(g).to(x.dtype).mul_(1.0 - is_r)  # green is, red is not
    is_b = is_r.add(is_g).neg_().add_(1.0)
    h = torch.sub(g, b).mul_(is_r)  # (B, H, W) hue x 6, in [-1, 5)
    part = torch.sub(b, r).add_(chroma, alpha=2.0)
    h.addcmul_(part, is_g)
    torch.sub(r, g, out=part).add_(chroma, alpha=4.0)
    h.addcmul_(part, is_b)
    h.div_(chroma.eq(0).to(x.dtype).add_(chroma))  # a gray pixel (C = 0) keeps hue 0
    h.add_((6.0 * hue).view(-1, 1, 1))
    for channel, n in zip((r, g, b), (5.0, 3.0, 1.0), strict=True):
        k = torch.add(h, n, out=part)
        k.sub_(k.div(6.0).floor_().mul_(6.0))  # mod 6 (floor is cheaper than remainder on CPUs)
        ramp = k.sub_(2.0).abs_().neg_().add_(2.0).clamp_(0.0, 1.0)
        torch.addcmul(maxc, chroma, ramp, value=-1.0, out=channel)
    return x


class ColorJitter(nn.Module):
    """torchvision's ``RandomApply([ColorJitter(b, c, s, h)], p)`` with everything drawn per image.

    Each image gets its own brightness, contrast and saturation factors (uniform in [max(0, 1 - v), 1 + v]),
    hue shift (uniform in [-h, h]), its own random order of the four operations, and is jittered with
    probability ``p``; values are clamped to [0, 1] after every operation, contrast blends with the mean
    of the image's grayscale, saturation with its per-pixel grayscale, hue rotates in HSV (torchvision's
    functional semantics). Brightness, contrast and saturation are one fused pass each
    (``clamp(f x + (1 - f) gray + (1 - f) mean)`` with the terms each needs), chosen per image; the hue
    rotation runs once for the batch, between the operations each image applies before it and those it
    applies after it (six blend passes and one hue pass for any mix of orders).
    """

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float, p: float = 1.0) -> None:
        super().__init__()
        self.brightness, self.contrast, self.saturation, self.hue, self.p = brightness, contrast, saturation, hue, p

    def extra_repr(self) -> str:
        b, c, s, h, p = self.brightness, self.contrast, self.saturation, self.hue, self.p
        return f"brightness={b:.4g}, contrast={c:.4g}, saturation={s:.4g}, hue={h:.4g}, p={p:.4g}"

    def sample(self, batch: int, device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """Per-image parameters: ``order`` (B, 4) (0 brightness, 1 contrast, 2 saturation, 3 hue, in the
        order applied), ``factors`` (B, 3) (brightness, contrast, saturation), ``hue`` (B,), ``applied`` (B,).
        Images that are not jittered get factors 1 and hue 0 (the identity)."""
        u = torch.rand(batch, 5, device=device)  # (B, 5)
        order = torch.rand(batch, 4, device=device).argsort(dim=1)  # (B, 4) a uniform permutation per image
        strengths = (self.brightness, self.contrast, self.saturation)
        lo = torch.tensor([max(0.0, 1 - v) for v in strengths], device=device)  # (3,)
        hi = torch.tensor([1 + v for v in strengths], device=device)
        factors = lo + (hi - lo) * u[:, :3]  # (B, 3)
        hue = (2 * u[:, 3] - 1) * self.hue  # (B,)
        applied = u[:, 4] < self.p  # (B,)
        factors = torch.where(applied[:, None], factors, torch.ones_like(factors))
        hue = torch.where(applied, hue, torch.zeros_like(hue))
        return {"order": order, "factors": factors, "hue": hue, "applied": applied}

    @staticmethod
    def apply(x: Tensor, params: dict[str, Tensor], inplace: bool = False) -> Tensor:
        """Jitter (B, 3, H, W) float images in [0, 1] with the parameters of :meth:`sample`.

        A hue of 0 (images not jittered) goes through the HSV round trip too, which returns them to within
        ~2e-6 (float rounding), far below a uint8 level."""
        x = x if inplace else x.clone()
        order, factors = params["order"], params["factors"]
        hue_slot = (order == 3).to(torch.uint8).argmax(dim=1)  # (B,) where each image rotates its hue
        for slot in range(3):  # the operations before the hue rotation
            _blend_pass_(x, order[:, slot], factors, slot < hue_slot)
        adjust_hue_(x, params["hue"])
        for slot in range(1, 4):  # and those after it
            _blend_pass_(x, order[:, slot], factors, slot > hue_slot)
        return x

    def forward(self, x: Tensor, inplace: bool = False) -> Tensor:
        return self.apply(x, self.sample(x.shape[0], x.device), inplace=inplace)


def _blend_pass_(x: Tensor, op: Tensor, factors: Tensor, active: Tensor) -> Tensor:
    """One of brightness (op 0), contrast (1) or saturation (2) per image where ``active``, in place:
    ``clamp(f x + s (1 - f) gray + c (1 - f) mean(gray), 0, 1)`` with s, c in {0, 1} saying which."""
    f = factors.gather(1, op.clamp(max=2).unsqueeze(1)).squeeze(1)  # (B,)
    f = torch.where(active, f, torch.ones_like(f))
    g = grayscale(x)  # (B, 1, H, W)
    saturation = (active & (op == 2)).to(x.dtype)  # (B,)
    contrast = (active & (op == 1)).to(x.dtype)
    offset = contrast * (1 - f) * g.mean(dim=(1, 2, 3))  # (B,)
    # the gray term on one channel's worth of pixels, then one multiply-add over all three channels
    g = g.mul_((saturation * (1 - f)).view(-1, 1, 1, 1)).add_(offset.view(-1, 1, 1, 1))  # (B, 1, H, W)
    torch.addcmul(g, x, f.view(-1, 1, 1, 1), out=x)
    return x.clamp_(0.0, 1.0)


class GaussianBlur(nn.Module):
    """torchvision's ``RandomApply([GaussianBlur(k, sigma)], p)`` per image: sigma uniform in ``sigma``,
    reflect padding, one separable depthwise convolution for the batch (a unit kernel for unblurred images)."""

    def __init__(self, kernel_size: int, sigma: Sequence[float] = (0.1, 2.0), p: float = 0.5) -> None:
        super().__init__()
        self.kernel_size, self.sigma, self.p = kernel_size, (float(sigma[0]), float(sigma[1])), p

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, sigma={self.sigma}, p={self.p:.4g}"

    def sample(self, batch: int, device: torch.device | str = "cpu") -> dict[str, Tensor]:
        u = torch.rand(batch, 2, device=device)  # (B, 2)
        sigma = self.sigma[0] + (self.sigma[1] - self.sigma[0]) * u[:, 0]  # (B,)
        return {"sigma": sigma, "applied": u[:, 1] < self.p}

    def apply(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        b, c, h, w = x.shape
        k = self.kernel_size
        half = (k - 1) / 2
        taps = torch.linspace(-half, half, k, device=x.device)  # (k,)
        kernel = torch.exp(-0.5 * (taps / params["sigma"][:, None]) ** 2)  # (B, k)
        kernel = kernel / kernel.sum(dim=1, keepdim=True)
        unit = (taps == 0).to(kernel.dtype)  # (k,)
        kernel = torch.where(params["applied"][:, None], kernel, unit).repeat_interleave(c, dim=0)  # (B C, k)
        y = F.pad(x.reshape(1, b * c, h, w), (k // 2,) * 4, mode="reflect")  # (1, B C, H + k - 1, W + k - 1)
        y = F.conv2d(y, kernel.view(b * c, 1, k, 1), groups=b * c)  # (1, B C, H, W + k - 1)
        y = F.conv2d(y, kernel.view(b * c, 1, 1, k), groups=b * c)  # (1, B C, H, W)
        return y.view(b, c, h, w)

    def forward(self, x: Tensor) -> Tensor:
        return self.apply(x, self.sample(x.shape[0], x.device))


class ViewAugment(nn.Module):
    """One stochastic view: SimCLR / MoCo v2 pipeline (METHODS.md), every choice made per image.

    random resized crop (antialiased) -> horizontal flip -> colour jitter (0.8s, 0.8s, 0.8s, 0.2s; p; its own
    order per image) -> grayscale -> Gaussian blur (sigma in [0.1, 2], kernel 10% of the side) ->
    solarisation -> normalise. Same semantics as the torchvision transforms of the official recipes, batched.

    Args:
        image_size: output side in pixels.
        crop_scale: area range of the random resized crop.
        hflip: apply random horizontal flips (p 0.5).
        jitter_strength: s, the colour strength (1.0 ImageNet, 0.5 CIFAR); 0 disables jitter.
        jitter_p: probability of applying the colour jitter.
        jitter_factors: explicit (brightness, contrast, saturation, hue) of the jitter instead of the
            strength's (0.8s, 0.8s, 0.8s, 0.2s), e.g. BYOL's (0.4, 0.4, 0.2, 0.1); None: from the strength.
        grayscale_p: probability of grayscale.
        blur_p: probability of Gaussian blur; None picks 0.5 for images >= 96 px, else 0.
        solarize_p: probability of solarisation (0 for SimCLR/MoCo v2).
        mean, std: per-channel normalisation.
        crop: False for views already cut to ``image_size`` (e.g. on the loader workers): no crop or
            resize here, only flip, photometry and normalisation.
    """

    def __init__(
        self,
        image_size: int,
        *,
        crop_scale: Sequence[float] = (0.08, 1.0),
        hflip: bool = True,
        jitter_strength: float = 1.0,
        jitter_p: float = 0.8,
        jitter_factors: Sequence[float] | None = None,
        grayscale_p: float = 0.2,
        blur_p: float | None = None,
        solarize_p: float = 0.0,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        crop: bool = True,
    ) -> None:
        super().__init__()
        check_image_size(image_size)
        scale = list(crop_scale) if isinstance(crop_scale, Sequence) and not isinstance(crop_scale, str) else []
        check(
            len(scale) == 2 and all(is_number(v) for v in scale) and 0 < scale[0] <= scale[1] <= 1,
            f"data.augment.crop_scale must be [min, max] with 0 < min <= max <= 1, got {crop_scale!r}",
        )
        lo, hi = float(scale[0]), float(scale[1])
        for name, p in (("jitter_p", jitter_p), ("grayscale_p", grayscale_p), ("solarize_p", solarize_p)):
            check_unit_interval(f"data.augment.{name}", p, closed_right=True)
        if blur_p is None:
            blur_p = 0.5 if image_size >= 96 else 0.0
        check_unit_interval("data.augment.blur_p", blur_p, closed_right=True)
        # hue 0.2s must stay within torchvision's [-0.5, 0.5]
        check(
            is_number(jitter_strength) and 0 <= jitter_strength <= 2.5,
            f"data.augment.jitter_strength must be in [0, 2.5] (0 disables jitter), got {jitter_strength!r}",
        )
        check(isinstance(hflip, bool), f"data.augment.hflip must be true or false, got {hflip!r}")
        check(isinstance(crop, bool), f"crop must be true or false, got {crop!r}")
        s = float(jitter_strength)
        factors = (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s) if jitter_factors is None else ()
        if isinstance(jitter_factors, Sequence) and not isinstance(jitter_factors, str):
            factors = tuple(jitter_factors)
        check(
            len(factors) == 4 and all(is_number(v) and v >= 0 for v in factors) and factors[3] <= 0.5,
            f"data.augment.jitter_factors must be null or [brightness, contrast, saturation, hue] >= 0 with hue <= 0.5, got {jitter_factors!r}",
        )
        self.image_size = image_size
        self.hflip_p = 0.5 if hflip else 0.0
        self.grayscale_p, self.solarize_p = float(grayscale_p), float(solarize_p)
        ops: list[nn.Module] = [RandomResizedCrop(image_size, scale=(lo, hi))] if crop else []
        if any(factors) and jitter_p > 0:
            ops.append(ColorJitter(*factors, p=jitter_p))
        if blur_p > 0:
            ops.append(GaussianBlur(blur_kernel_size(image_size), sigma=(0.1, 2.0), p=blur_p))
        self.ops = nn.ModuleList(ops)  # the random operations with parameters, in the order applied
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    def extra_repr(self) -> str:
        return f"hflip_p={self.hflip_p}, grayscale_p={self.grayscale_p}, solarize_p={self.solarize_p}"

    def _op(self, kind: type[nn.Module]) -> nn.Module | None:
        return next((op for op in self.ops if isinstance(op, kind)), None)

    @property
    def crop(self) -> RandomResizedCrop | None:
        """The random resized crop (None for views cut beforehand)."""
        return self._op(RandomResizedCrop)  # type: ignore[return-value]

    @property
    def jitter(self) -> ColorJitter | None:
        return self._op(ColorJitter)  # type: ignore[return-value]

    @property
    def blur(self) -> GaussianBlur | None:
        return self._op(GaussianBlur)  # type: ignore[return-value]

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) uint8 or float in [0, 1] -> (B, 3, S, S) normalised float.

        Every parameter is drawn for the whole batch first; then, on a CPU, the images are processed in
        chunks of about 2 MB of views, so that the many elementwise passes run in cache (a 224 px batch streams
        through memory at every pass otherwise); on accelerators the batch is one chunk. Per-image
        parameters make the chunking exact.
        """
        b, device, size = x.shape[0], x.device, self.image_size
        crop, jitter, blur = self.crop, self.jitter, self.blur
        if crop is None and x.shape[-2:] != (size, size):
            raise ValueError(f"views cut beforehand must be {size}x{size}, got {tuple(x.shape[-2:])}")
        params: dict[str, Any] = {
            "flip": torch.rand(b, device=device) < self.hflip_p if self.hflip_p > 0 else None,  # (B,)
            "boxes": crop.sample(x) if crop is not None else None,  # (B, 4)
            "jitter": jitter.sample(b, device) if jitter is not None else None,
            "gray": torch.rand(b, device=device) < self.grayscale_p if self.grayscale_p > 0 else None,
            "blur": blur.sample(b, device) if blur is not None else None,
            "solar": torch.rand(b, device=device) < self.solarize_p if self.solarize_p > 0 else None,
        }
        out = torch.empty(b, 3, size, size, device=device)  # (B, 3, S, S)
        step = b if device.type != "cpu" else max(1, CPU_CHUNK_ELEMENTS // (3 * size * size))
        for start in range(0, b, step):
            rows = slice(start, start + step)
            self._views(x[rows], _rows(params, rows), out[rows])
        return out

    def _views(self, x: Tensor, params: dict[str, Any], out: Tensor) -> None:
        """The views of a chunk of images, written into ``out``."""
        flip = params["flip"]
        if params["boxes"] is not None:
            resized_crop(x, params["boxes"], self.image_size, flip, out=out)  # in [0, 1], flipped where drawn
        else:
            out.copy_(x)
            if x.dtype == torch.uint8:
                out.div_(255.0)
            if flip is not None:
                out.lerp_(out.flip(-1), flip.view(-1, 1, 1, 1).to(out.dtype))
        if params["jitter"] is not None:
            ColorJitter.apply(out, params["jitter"], inplace=True)
        if params["gray"] is not None:
            out.lerp_(grayscale(out).expand_as(out), params["gray"].view(-1, 1, 1, 1).to(out.dtype))
        if params["blur"] is not None:
            out.copy_(self.blur.apply(out, params["blur"]))  # type: ignore[union-attr]
        if params["solar"] is not None:
            solarized = (out - 0.5).abs_().neg_().add_(0.5)  # 1 - x where x >= 0.5, else x
            out.lerp_(solarized, params["solar"].view(-1, 1, 1, 1).to(out.dtype))
        normalize_(out, self.mean, self.std)


CPU_CHUNK_ELEMENTS = 1 << 19  # view floats per chunk of images on a CPU (2 MB: the working set stays in cache)


def _rows(params: Any, rows: slice) -> Any:
    """The parameters of a chunk of images (every tensor's leading dimension is the batch)."""
    if isinstance(params, dict):
        return {key: _rows(value, rows) for key, value in params.items()}
    return params[rows] if isinstance(params, Tensor) else params


def normalize_(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(x - mean) / std per channel, in place."""
    scale = torch.tensor([1.0 / v for v in std], device=x.device).view(1, -1, 1, 1)
    shift = torch.tensor([-m / v for m, v in zip(mean, std, strict=True)], device=x.device).view(1, -1, 1, 1)
    return torch.addcmul(shift, x, scale, out=x)


class MultiView(nn.Module):
    """Several independent views of each image: a list of (B, 3, S_v, S_v) tensors."""

    def __init__(self, views: Sequence[nn.Module]) -> None:
        super().__init__()
        self.views = nn.ModuleList(views)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [view(x) for view in self.views]


class EvalTransform(nn.Module):
    """Deterministic evaluation transform: resize or centre-crop to ``image_size``, then normalise.

    With ``center_crop`` an image at least ``image_size`` on both sides is centre-cropped; a smaller one is
    first resized (shorter side to ``image_size``, aspect kept). Without it images are resized to the square.
    """

    def __init__(
        self,
        image_size: int,
        *,
        center_crop: bool = False,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
    ) -> None:
        super().__init__()
        check_image_size(image_size)
        self.image_size = image_size
        self.center_crop = center_crop
        self.normalize = K.Normalize(mean=torch.tensor(mean), std=torch.tensor(std))

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) uint8 or float in [0, 1] -> (B, 3, S, S) normalised float."""
        x = to_float(x)
        size = self.image_size
        h, w = x.shape[-2:]
        if (h, w) == (size, size):
            return self.normalize(x)
        if not self.center_crop:
            return self.normalize(resize(x, (size, size), antialias=True))
        if min(h, w) < size:
            x = resize(x, size, side="short", antialias=True)  # (B, 3, >= S, >= S)
            h, w = x.shape[-2:]
        top, left = (h - size) // 2, (w - size) // 2
        return self.normalize(x[..., top : top + size, left : left + size])


def to_float(x: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; float input is returned as float32."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
