"""Image files (listed by :mod:`cssl.data.listing`): robust reading, the evaluation set of resized images, and
the pretraining set whose views are cut from the original images on the loader workers (:mod:`cssl.data.views`).

A bad file (undecodable or truncated) is skipped: replaced by the next readable image of the listing, named
once in a warning per process, and counted in the batch so that ``data/skipped_images`` reaches the logger
(:class:`SkippedImages`). With ``skip_bad_images=False`` it is an error naming the file.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from cssl.core.errors import ConfigError
from cssl.data.views import ViewSpec, decode_views, sample_boxes

# what PIL and decode_jpeg raise on corrupt, truncated or foreign data
UNREADABLE = (OSError, ValueError, RuntimeError, SyntaxError, EOFError, Image.DecompressionBombError)
MAX_TRIES = 100  # consecutive unreadable files before giving up
_warned: set[str] = set()  # files already named in a warning by this process


class BadImageError(ConfigError):
    """An unreadable image with ``data.skip_bad_images=false``.

    The loader workers re-raise an exception with its traceback in the message; the one line that names
    the file is kept, so the entry points still print one line.
    """

    def __init__(self, message: str) -> None:
        line = message.strip().splitlines()[-1] if message.strip() else message
        prefix = f"{type(self).__module__}.{type(self).__name__}: "
        super().__init__(line[len(prefix) :] if line.startswith(prefix) else line)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def bad_image(path: str, err: BaseException, skip: bool) -> None:
    """Warn once per process about a skipped file, or raise :class:`BadImageError` naming it."""
    reason = " ".join(str(err).split()) or type(err).__name__
    if not skip:
        raise BadImageError(
            f"data.skip_bad_images=false: could not read {path} ({reason}); replace or remove the file, "
            "or set data.skip_bad_images=true to skip such files"
        )
    if path not in _warned:
        _warned.add(path)
        warnings.warn(
            f"data: skipped unreadable image {path} ({reason}); replaced by another image, "
            "counted in data/skipped_images",
            stacklevel=2,
        )


class ImageList(Dataset):
    """Listed images (``(path, label)`` pairs, e.g. a :class:`cssl.data.listing.Listing`'s) read as RGB and
    passed through ``transform``, bad files replaced by the next readable one:
    the evaluation sets and the kNN bank of ``data=folder`` and ``data=imagefolder``."""

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        *,
        transform: Any,
        classes: Sequence[str] = (),
        skip_bad_images: bool = True,
        source: str = "",
    ) -> None:
        self.samples, self.classes, self.transform = list(samples), list(classes), transform
        self.skip_bad_images, self.root = skip_bad_images, source

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        for k in range(MAX_TRIES):
            path, target = self.samples[(index + k) % len(self.samples)]
            try:
                return self.transform(_rgb_loader(path)), target
            except UNREADABLE as err:
                bad_image(path, err, self.skip_bad_images)
        raise ConfigError(f"data.root: {MAX_TRIES} consecutive images from {self.root} could not be read")


def _rgb_loader(path: str) -> Any:
    from PIL import Image

    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


def view_payload(data: bytes, views: Sequence[ViewSpec], decode: str, generator: torch.Generator | None) -> Any:
    """One encoded image's training item: its views cut here (``decode="cpu"``: uint8 tensors), or its bytes
    and crop boxes for the device decoder (``"gpu"``: :func:`cssl.data.views.decode_on_device`). Shared by the
    folder and the shards (whose records hold the original files)."""
    if decode == "cpu":
        return decode_views(data, views, generator)
    header = Image.open(io.BytesIO(data))  # reads the header only
    width, height = header.size
    boxes = torch.tensor(sample_boxes(height, width, views, generator), dtype=torch.long)  # (V, 4)
    device_jpeg = header.format == "JPEG" and header.mode == "RGB"  # CMYK, grayscale, PNG: CPU decoder
    return {"data": bytes(data), "boxes": boxes, "device_jpeg": device_jpeg}  # bytes: records come as memoryview


class FolderViews(Dataset):
    """The pretraining set of an image folder: per image, every view cut from the original.

    Items are ``(views, label, skipped)``: with ``decode="cpu"`` ``views`` is a list of uint8 tensors
    (3, S_v, S_v), one per view; with ``decode="gpu"`` it is ``{"data": bytes, "boxes": (V, 4) int64,
    "device_jpeg": bool, "path": str}`` for :func:`cssl.data.views.decode_on_device`. ``skipped`` counts the
    unreadable files replaced to make this item (0 almost always).

    An index may come with its own seed, ``(index, seed)`` (as :class:`cssl.data.resumable.ResumableSampler`
    deals them, a function of the run's seed, the epoch and the index): the crop boxes are then drawn from a
    generator seeded with it, so that they do not depend on which worker makes the item or on where a
    resumed run restarted its workers. A plain index draws from the worker's global generator.

    Args:
        samples: (path, label) pairs.
        views: the views of the recipe.
        decode: ``"cpu"`` (decode and cut on the worker) or ``"gpu"`` (read and sample boxes only).
        skip_bad_images: replace unreadable files by the next readable one (else raise).
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        views: Sequence[ViewSpec],
        *,
        decode: str = "cpu",
        skip_bad_images: bool = True,
    ) -> None:
        self.samples, self.views, self.decode, self.skip_bad_images = (
            list(samples),
            list(views),
            decode,
            skip_bad_images,
        )

    seeded_draws = True  # the resumable sampler deals (index, seed) pairs to this dataset

    def __len__(self) -> int:
        return len(self.samples)

    def _item(self, path: str, generator: torch.Generator | None) -> Any:
        payload = view_payload(_read(path), self.views, self.decode, generator)
        if isinstance(payload, dict):
            payload["path"] = path
        return payload

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[Any, int, int]:
        generator = None
        if isinstance(index, tuple):
            index, seed = index
            generator = torch.Generator().manual_seed(seed)
        for k in range(MAX_TRIES):
            path, label = self.samples[(index + k) % len(self.samples)]
            try:
                return self._item(path, generator), label, k
            except UNREADABLE as err:
                bad_image(path, err, self.skip_bad_images)
        raise ConfigError(f"data.root: {MAX_TRIES} consecutive images could not be read (last: {path})")


def replace_bad(views: list[Tensor], labels: Tensor, bad: Tensor, paths: Sequence[str], skip: bool) -> None:
    """In place: rows of files no decoder read (``bad``, (B,) bool) take the views and label of the next
    good row of the batch (the device-decode path's skip); or raise naming the first bad file."""
    rows = bad.nonzero().flatten().tolist()
    good = (~bad).nonzero().flatten().tolist()
    for i in rows:
        bad_image(paths[i], OSError("no decoder could read it"), skip)
    if not good:
        raise ConfigError(f"data.root: no image of a batch could be read (first: {paths[rows[0]]})")
    for i in rows:
        j = next((g for g in good if g > i), good[0])
        for v in views:
            v[i] = v[j]
        labels[i] = labels[j]


class SkippedImages(pl.Callback):
    """Logs ``data/skipped_images``: unreadable files replaced during the epoch, summed over ranks.

    The data module leaves the count of its last training batch (a device tensor) in ``skipped_images``;
    summing per step and syncing at the epoch's end costs no host sync and one reduction per epoch.
    """

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        count = getattr(trainer.datamodule, "skipped_images", None)
        if count is not None:
            pl_module.log(
                "data/skipped_images", count.float(), on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True
            )
