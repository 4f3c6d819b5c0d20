"""The training views of a run in one place: how many, at which sizes, which are support views, and how each
is augmented. A :class:`ViewPlan` is handed to a data module when it is constructed, and the data module
builds it for its own image size and normalisation: on the device for in-memory data, or cut from the
original images on the loader workers (geometry) with the photometry on the device, for image folders.

Pretraining, the preview and linear evaluation all describe their views with it.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cssl.core.errors import check, is_int, is_number
from cssl.data.augment import MultiView, ViewAugment
from cssl.data.views import ViewSpec

#: The per-view augmentation keys (:class:`ViewAugment`'s keywords, less what the data module supplies).
AUGMENT_KEYS = frozenset(inspect.signature(ViewAugment).parameters) - {"image_size", "mean", "std", "crop"}


@dataclass(frozen=True)
class ViewPlan:
    """The views of one training batch, in order: ``main`` views at ``size`` (each with ``augment``, overridden
    per view by ``per_view``), one extra view per ``multicrop`` size, then ``support`` views (full size, the
    same augmentation; FNC's detection, NEGATIVES.md 1.1).

    Args:
        augment: :class:`ViewAugment` keywords (``data.augment``).
        main: views the method contrasts.
        per_view: null or one mapping of ``augment`` overrides per main view (``data.augment_per_view``:
            BYOL's asymmetric views).
        multicrop: null or ``{sizes: [S, ...], scales: [[min, max], ...]}`` (``data.multicrop``).
        support: support views per image.
        size: side of the main and support views; None: the data's ``image_size``.
        single: one view as one tensor (B, 3, S, S) instead of a list (a classifier's training images).
    """

    augment: dict[str, Any]
    main: int = 2
    per_view: list[dict[str, Any]] | None = None
    multicrop: dict[str, Any] | None = None
    support: int = 0
    size: int | None = None
    single: bool = False
    _extra: list[tuple[int, tuple[float, float]]] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        per_view = self.per_view
        check(
            per_view is None
            or (
                isinstance(per_view, list) and len(per_view) == self.main and all(isinstance(v, dict) for v in per_view)
            ),
            f"data.augment_per_view must be null or a list of {self.main} mappings (one per view), got {per_view!r}",
        )
        for own in per_view or []:
            unknown = sorted(set(own) - AUGMENT_KEYS)
            check(
                not unknown,
                f"data.augment_per_view: unknown augmentation keys {unknown}; choose from {sorted(AUGMENT_KEYS)}",
            )
        self._extra.extend(_multicrop_views(self.multicrop))
        check(not (self.single and (self.main != 1 or self._extra or self.support)), "a single view plan has one view")

    def _main_options(self) -> list[dict[str, Any]]:
        return [{**self.augment, **own} for own in (self.per_view or [{}] * self.main)]

    def _all_options(self, image_size: int) -> list[tuple[int, dict[str, Any]]]:
        size = self.size or image_size
        views = [(size, options) for options in self._main_options()]
        views += [(side, {**self.augment, "crop_scale": list(scale)}) for side, scale in self._extra]
        return views + [(size, dict(self.augment)) for _ in range(self.support)]

    def transform(self, image_size: int, mean: Sequence[float], std: Sequence[float], *, crop: bool = True) -> Any:
        """The on-device augmentation of the plan: a :class:`MultiView` (or one :class:`ViewAugment` for a
        ``single`` plan). ``crop=False``: its photometric part only, for views already cut to size."""
        views = [
            ViewAugment(side, mean=mean, std=std, crop=crop, **options)
            for side, options in self._all_options(image_size)
        ]
        return views[0] if self.single else MultiView(views)

    def specs(self, image_size: int) -> list[ViewSpec]:
        """Side and crop box distribution of every view, in order, for loaders that cut views from the original
        images (the crop of :meth:`transform`'s views)."""
        crops = [v.crop for v in _views(self.transform(image_size, (0.0,) * 3, (1.0,) * 3))]
        return [ViewSpec(c.size, tuple(float(s) for s in c.scale), tuple(float(r) for r in c.ratio)) for c in crops]


def _views(transform: Any) -> list[ViewAugment]:
    return list(transform.views) if isinstance(transform, MultiView) else [transform]


def _multicrop_views(multicrop: Any) -> list[tuple[int, tuple[float, float]]]:
    """The validated (side, crop scale) of each extra view of ``data.multicrop``."""
    if not multicrop:
        return []
    check(
        isinstance(multicrop, dict) and set(multicrop) == {"sizes", "scales"},
        f"data.multicrop must be null or {{sizes: [...], scales: [[min, max], ...]}}, got {multicrop!r}",
    )
    sizes, scales = multicrop["sizes"], multicrop["scales"]
    check(
        isinstance(sizes, list) and isinstance(scales, list) and len(sizes) == len(scales) > 0,
        f"data.multicrop.sizes and data.multicrop.scales must be lists of equal length, got {sizes!r} and {scales!r}",
    )
    for size, scale in zip(sizes, scales, strict=True):
        check(is_int(size) and size >= 8, f"data.multicrop.sizes entries must be integers >= 8, got {size!r}")
        check(
            isinstance(scale, list)
            and len(scale) == 2
            and all(is_number(v) for v in scale)
            and 0 < scale[0] <= scale[1] <= 1,
            f"data.multicrop.scales entries must be [min, max] with 0 < min <= max <= 1, got {scale!r}",
        )
    return [(int(size), (float(scale[0]), float(scale[1]))) for size, scale in zip(sizes, scales, strict=True)]
