"""Batched augmentation on the accelerator with kornia.

Loaders only decode and collate uint8 images; these modules turn a (B, 3, H, W) uint8 batch that is
already on the device into normalised float views.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
import torch
import torch.nn as nn
from kornia.geometry.transform import resize
from torch import Tensor

from cssl.errors import _is_number, check, check_unit_interval


def blur_kernel_size(image_size: int) -> int:
    """SimCLR's blur kernel: 10% of the side, made odd (at least 3).

    >>> blur_kernel_size(224), blur_kernel_size(96), blur_kernel_size(32)
    (23, 9, 3)
    """
    return max(3, int(0.1 * image_size) // 2 * 2 + 1)


def check_image_size(image_size: int) -> None:
    check(
        isinstance(image_size, int) and not isinstance(image_size, bool) and image_size >= 8,
        f"data.image_size must be an integer >= 8, got {image_size!r}",
    )


class ViewAugment(nn.Module):
    """One stochastic view: SimCLR / MoCo v2 pipeline (METHODS.md), applied per sample on the batch.

    random resized crop -> horizontal flip -> colour jitter (0.8s, 0.8s, 0.8s, 0.2s; p) -> grayscale
    -> Gaussian blur (sigma in [0.1, 2], kernel 10% of the side) -> solarisation -> normalise.

    Args:
        image_size: output side in pixels.
        crop_scale: area range of the random resized crop.
        hflip: apply random horizontal flips (p 0.5).
        jitter_strength: s, the colour strength (1.0 ImageNet, 0.5 CIFAR); 0 disables jitter.
        jitter_p: probability of applying the colour jitter.
        grayscale_p: probability of grayscale.
        blur_p: probability of Gaussian blur; None picks 0.5 for images >= 96 px, else 0.
        solarize_p: probability of solarisation (0 for SimCLR/MoCo v2).
        mean, std: per-channel normalisation.
        crop: take the random resized crop here; False for inputs that are already views of
            ``image_size`` cut from the original image on the loader workers (:mod:`cssl.data.views`).
    """

    def __init__(
        self,
        image_size: int,
        *,
        crop_scale: Sequence[float] = (0.08, 1.0),
        hflip: bool = True,
        jitter_strength: float = 1.0,
        jitter_p: float = 0.8,
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
            len(scale) == 2 and all(_is_number(v) for v in scale) and 0 < scale[0] <= scale[1] <= 1,
            f"data.augment.crop_scale must be [min, max] with 0 < min <= max <= 1, got {crop_scale!r}",
        )
        lo, hi = float(scale[0]), float(scale[1])
        for name, p in (("jitter_p", jitter_p), ("grayscale_p", grayscale_p), ("solarize_p", solarize_p)):
            check_unit_interval(f"data.augment.{name}", p, closed_right=True)
        if blur_p is None:
            blur_p = 0.5 if image_size >= 96 else 0.0
        check_unit_interval("data.augment.blur_p", blur_p, closed_right=True)
        # hue 0.2s must stay within kornia's (and torchvision's) [-0.5, 0.5]
        check(
            _is_number(jitter_strength) and 0 <= jitter_strength <= 2.5,
            f"data.augment.jitter_strength must be in [0, 2.5] (0 disables jitter), got {jitter_strength!r}",
        )
        s = float(jitter_strength)
        ops: list[nn.Module] = [K.RandomResizedCrop((image_size, image_size), scale=(lo, hi))] if crop else []
        if hflip:
            ops.append(K.RandomHorizontalFlip())
        if s > 0 and jitter_p > 0:
            ops.append(K.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=jitter_p))
        if grayscale_p > 0:
            ops.append(K.RandomGrayscale(p=grayscale_p))
        if blur_p > 0:
            k = blur_kernel_size(image_size)
            ops.append(K.RandomGaussianBlur((k, k), sigma=(0.1, 2.0), p=blur_p))
        if solarize_p > 0:
            ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))
        self.ops = nn.Sequential(*ops)
        self.normalize = K.Normalize(mean=torch.tensor(mean), std=torch.tensor(std))

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) uint8 or float in [0, 1] -> (B, 3, S, S) normalised float."""
        return self.normalize(self.ops(to_float(x)))


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
