"""The lab dataset: a small benchmark made offline from scikit-learn's bundled digits, hard for raw pixels and
for a randomly initialised network, learnable by contrastive pretraining with the standard augmentations.

Each image is one of the 8x8 digits (upsampled 4x, bicubic), placed on a 32 px canvas at a random scale and
position (optionally rotated), in one grey level on a background of another: a random pair of levels at least
``min_contrast`` apart, in either polarity. The train and held-out images are drawn from disjoint digit
instances (the same stratified 80/20 split as ``data=digits``), so a held-out image never shows a glyph seen
in training. Every nuisance is one the pretraining augmentations vary too (crop scale and position, brightness
and contrast), except the polarity, which survives them but carries a single bit.

The images are a function of the options and ``generator_seed`` only; they are computed on the CPU in about a
second and cached as ``<root>/lab/<hash>.pt`` (written atomically; a damaged cache file is remade).
How the design was chosen, and what was measured: docs/datasets/lab.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cssl.core import storage
from cssl.core.errors import check, is_int, is_number
from cssl.data.digits import digits_split

#: Bump when the generator changes: older cache files are then not reused.
GENERATOR_VERSION = 1


def lab_options(
    *,
    generator_seed: int,
    train_size: int,
    val_size: int,
    glyph_scale: Sequence[float],
    min_contrast: float,
    rotation: float,
    image_size: int,
) -> dict[str, Any]:
    """The checked options that define the images (their cache key)."""
    check(
        is_int(generator_seed) and generator_seed >= 0,
        f"data.generator_seed must be an integer >= 0, got {generator_seed!r}",
    )
    for key, value in (("train_size", train_size), ("val_size", val_size)):
        check(is_int(value) and value >= 10, f"data.{key} must be an integer >= 10, got {value!r}")
    check(
        isinstance(glyph_scale, Sequence)
        and not isinstance(glyph_scale, str)
        and len(glyph_scale) == 2
        and all(is_number(v) for v in glyph_scale)
        and 0 < glyph_scale[0] <= glyph_scale[1] <= 1,
        f"data.glyph_scale must be [min, max] with 0 < min <= max <= 1 (the glyph's side / the image's), got {glyph_scale!r}",
    )
    check(
        is_number(min_contrast) and 0 < min_contrast <= 1, f"data.min_contrast must be in (0, 1], got {min_contrast!r}"
    )
    check(is_number(rotation) and 0 <= rotation <= 180, f"data.rotation must be in [0, 180] degrees, got {rotation!r}")
    return {
        "version": GENERATOR_VERSION,
        "generator_seed": int(generator_seed),
        "train_size": int(train_size),
        "val_size": int(val_size),
        "glyph_scale": [float(glyph_scale[0]), float(glyph_scale[1])],
        "min_contrast": float(min_contrast),
        "rotation": float(rotation),
        "image_size": int(image_size),
    }


def _glyphs() -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """The digits' (glyphs (M, 1, 32, 32) in [0, 1], labels (M,)) of the train and held-out instances: the
    split of ``data=digits``, upsampled 4x (bicubic)."""

    def upsampled(glyphs: Tensor) -> Tensor:
        return F.interpolate(glyphs, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)

    (train, train_labels), (val, val_labels) = digits_split()
    return (upsampled(train), train_labels), (upsampled(val), val_labels)


def render(glyphs: Tensor, n: int, g: torch.Generator, options: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """``n`` images (n, 3, S, S) uint8 drawn from ``glyphs`` (M, 1, h, w) with ``g``, and which glyph each shows."""
    size = options["image_size"]
    lo, hi = options["glyph_scale"]
    which = torch.randint(len(glyphs), (n,), generator=g)
    scale = lo + (hi - lo) * torch.rand(n, generator=g)  # glyph side / image side
    angle = (2 * torch.rand(n, generator=g) - 1) * math.radians(options["rotation"])
    shift = (2 * torch.rand(n, 2, generator=g) - 1) * (1 - scale)[:, None]  # the glyph stays inside the image
    cos, sin = torch.cos(angle), torch.sin(angle)
    # output -> glyph coordinates: the inverse of "rotate, scale by s, move by t"
    theta = (
        torch.stack(
            [
                torch.stack([cos, sin, -(cos * shift[:, 0] + sin * shift[:, 1])], 1),
                torch.stack([-sin, cos, sin * shift[:, 0] - cos * shift[:, 1]], 1),
            ],
            1,
        )
        / scale[:, None, None]
    )
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    ink = F.grid_sample(glyphs[which], grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (n, 1, S, S)
    contrast = options["min_contrast"] + (1 - options["min_contrast"]) * torch.rand(n, 1, generator=g)
    dark = torch.rand(n, 1, generator=g) * (1 - contrast)  # the darker level; the lighter is dark + contrast
    light_ink = torch.rand(n, 1, generator=g) < 0.5  # polarity
    fg = torch.where(light_ink, dark + contrast, dark)[:, :, None, None]
    bg = torch.where(light_ink, dark, dark + contrast)[:, :, None, None]
    image = bg + (fg - bg) * ink  # (n, 1, S, S) in [0, 1]
    return image.mul(255).round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous(), which


def generate(options: dict[str, Any]) -> dict[str, Tensor]:
    """The lab images and labels of ``options`` (from :func:`lab_options`): train and val splits."""
    (train_glyphs, train_labels), (val_glyphs, val_labels) = _glyphs()
    g = torch.Generator().manual_seed(options["generator_seed"])
    train, train_which = render(train_glyphs, options["train_size"], g, options)
    val, val_which = render(val_glyphs, options["val_size"], g, options)
    return {
        "train_images": train,
        "train_labels": train_labels[train_which],
        "val_images": val,
        "val_labels": val_labels[val_which],
    }


def options_hash(options: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]


def load_or_generate(root: Path, options: dict[str, Any]) -> dict[str, Tensor]:
    """The images of ``options`` from ``root/lab/<hash>.pt``, generated and stored there when absent or
    unreadable. A root that cannot be written only loses the cache."""
    path = root / "lab" / f"{options_hash(options)}.pt"
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored.get("options") == options:
                return stored["data"]
        except (OSError, RuntimeError, EOFError, KeyError, AttributeError, ValueError, pickle.UnpicklingError):
            pass  # damaged (truncated, foreign, not a tensor file): made again
    data = generate(options)
    try:
        storage.atomic_write(path, lambda f: torch.save({"options": options, "data": data}, f))
    except (OSError, storage.StorageError) as err:  # the images are made again next time
        storage.optional_output("lab image cache", path, err)
    return data
