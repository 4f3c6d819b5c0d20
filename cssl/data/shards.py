"""Pretraining from LitData streaming shards (written by ``python -m cssl.shard``), local or on an object store.

The training set is a :class:`litdata.StreamingDataset`: LitData deals chunks out to ranks and loader workers
(every rank reads distinct records; the remainder of ``N mod (batch * ranks)`` records is dropped so that
ranks stay in step, as the folder path's loader drops its last partial batch), shuffles chunks and records
within them by ``(seed, epoch)``, and keeps a small local cache of the chunks of a remote root. Each record
holds the original encoded file, so every view is cut from the original image on the loader workers
(:func:`cssl.data.views.decode_views`, boxes drawn from a generator seeded by ``(seed, epoch, sample id)``)
exactly as :class:`cssl.data.folder.FolderViews` does; an unreadable record is replaced by the next readable one
and counted (``data/skipped_images``).

Evaluation sets (the kNN bank, the held-out images, linear-probe test images) are read by random access
(:class:`ShardImages`): ``data.eval_root`` (another shard folder, e.g. converted from ``val/``) or, without it,
a seeded ``data.val_fraction`` of the records held out of training.

Mid-epoch resume: the data module saves where training stands (epoch and batches done, as the folder path) and
hands LitData's loader the state of that point, so a resumed run continues with the next batch of the epoch.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor
from torch.utils.data import Dataset

from cssl.core.errors import ConfigError, check, is_number
from cssl.data.datamodules import DATASETS, FolderDataModule, ImageDataModule
from cssl.data.folder import MAX_TRIES, UNREADABLE, bad_image, view_payload
from cssl.data.listing import say
from cssl.data.resumable import draw_seed
from cssl.data.views import ViewSpec

MANIFEST = "manifest.json"
REMOTE = ("s3://", "gs://", "azure://", "r2://", "hf://", "local:")


def is_remote(root: str) -> bool:
    return str(root).startswith(REMOTE)


def _local(root: str) -> str:
    return os.path.abspath(os.path.expanduser(str(root)))


def _input_dir(root: str, cache_dir: str | None) -> Any:
    """What LitData reads: a local folder, or a remote URL with its local cache folder."""
    from litdata.streaming.resolver import Dir

    if is_remote(root):
        return Dir(path=_local(cache_dir), url=str(root).rstrip("/")) if cache_dir else str(root).rstrip("/")
    return _local(root)


def read_manifest(root: str, cache_dir: str | None = None) -> dict[str, Any]:
    """The ``manifest.json`` that ``python -m cssl.shard`` wrote under ``root`` (fetched for a remote root, with
    the object store's usual credentials: e.g. ``AWS_*`` environment variables for ``s3://``)."""
    hint = f"convert images with `python -m cssl.shard SRC {root}`"
    try:
        if is_remote(root):
            from litdata.streaming.downloader import get_downloader

            folder = _local(cache_dir) if cache_dir else tempfile.mkdtemp(prefix="cssl-shards-")
            os.makedirs(folder, exist_ok=True)
            local = os.path.join(folder, MANIFEST)
            get_downloader(str(root).rstrip("/"), folder, []).download_file(
                f"{str(root).rstrip('/')}/{MANIFEST}", local
            )
        else:
            local = os.path.join(_local(root), MANIFEST)
        with open(local) as f:
            manifest = json.load(f)
    except (OSError, ValueError, RuntimeError) as err:  # missing, unreadable, not JSON; remote errors
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ConfigError(f"data.root: no shards at {root} (could not read {MANIFEST}: {reason}); {hint}") from None
    check(
        isinstance(manifest, dict) and manifest.get("format") == "cssl-shards",
        f"data.root: {root}/{MANIFEST} is not a cssl shard manifest; {hint}",
    )
    check(manifest.get("complete") is True, f"data.root: the conversion into {root} is unfinished; run it again")
    return manifest


@rank_zero_only
def _say(line: str) -> None:
    say(line)


def quiet() -> None:
    """LitData's start-up notes (cache size, mmap mode) at info level, once per reader, stay out of the log."""
    logging.getLogger("litdata").setLevel(logging.WARNING)


def _open(root: str, cache_dir: str | None, **kwargs: Any) -> Any:
    from litdata import StreamingDataset

    quiet()

    try:
        return StreamingDataset(_input_dir(root, cache_dir), cache_dir=None, **kwargs)
    except (OSError, ValueError, RuntimeError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ConfigError(f"data.root: could not open the shards at {root} ({reason})") from None


@functools.cache
def _streaming_views_class() -> type:
    """:class:`ShardViews`, made on first use: importing LitData costs a quarter second that only runs which
    read shards should pay (``cssl.data.shards.ShardViews`` resolves through the module's ``__getattr__``, so
    the class pickles by name)."""
    from litdata import StreamingDataset

    class ShardViews(StreamingDataset):
        """The training stream: ``(views, label, skipped)`` per record, as :class:`FolderViews` items.

        Crop boxes are drawn from a generator seeded by ``(draw, epoch, sample id)``, so they do not depend on
        which worker reads the record or where a resumed run restarted.
        """

        def __init__(
            self,
            input_dir: Any,
            *,
            views: Sequence[ViewSpec],
            decode: str,
            skip_bad_images: bool,
            draw: int,
            source: str,
            cache_dir: str | None,
            count: int,
            **kwargs: Any,
        ) -> None:
            super().__init__(input_dir, **kwargs)
            self.views, self.decode, self.skip_bad_images, self.draw = list(views), decode, skip_bad_images, draw
            self.source, self.source_cache, self.count = source, cache_dir, count
            self.with_ids = False  # items also carry their sample id (the coverage tests)
            self._next: ShardImages | None = None  # reads the records after a bad one, by id

        def __getitem__(self, index: Any) -> Any:
            record = super().__getitem__(index)
            sample = int(record["id"])
            for k in range(MAX_TRIES):
                if k:  # a bad record: the next one in id order, as the folder path takes the next file
                    if self._next is None:
                        self._next = ShardImages(self.source, self.source_cache, range(self.count), load_size=0)
                    record = self._next.record((sample + 1) % self.count)
                sample = int(record["id"])
                generator = torch.Generator().manual_seed(draw_seed(self.draw, int(self.current_epoch), sample))
                try:
                    payload = view_payload(record["image"], self.views, self.decode, generator)
                except UNREADABLE as err:
                    bad_image(f"{self.source}#{sample}", err, self.skip_bad_images)
                    continue
                if isinstance(payload, dict):
                    payload["path"] = f"{self.source}#{sample}"
                item = (payload, int(record["label"]), k)
                return (*item, sample) if self.with_ids else item
            raise ConfigError(f"data.root: {MAX_TRIES} consecutive records of {self.source} could not be read")

    ShardViews.__module__, ShardViews.__qualname__ = __name__, "ShardViews"
    return ShardViews


@functools.cache
def _loader_class() -> type:
    from litdata import StreamingDataLoader

    class ShardLoader(StreamingDataLoader):
        """LitData's loader whose restored state serves the first pass only.

        LitData keeps replaying a loaded state until a pass runs to its end; a pass that Lightning stops early
        (``limit_train_batches``, or the last partial epoch of ``max_steps``) would then start the next epoch
        at the restored position again (LitData's tracker: resume lost after breaking an epoch early)."""

        passes = 0

        def __iter__(self) -> Any:
            if self.passes:
                self.restore = False
            self.passes += 1
            yield from super().__iter__()

    return ShardLoader


def __getattr__(name: str) -> Any:
    if name == "ShardViews":
        return _streaming_views_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ShardImages(Dataset):
    """Random access to records ``indices`` of a shard folder, each decoded whole, resized (shorter side) and
    centre-cropped to ``load_size`` (the evaluation images, as the folder path's); an unreadable record is
    replaced by the next one and counted as in the folder path. The LitData reader opens lazily in each
    process."""

    def __init__(
        self,
        root: str,
        cache_dir: str | None,
        indices: Sequence[int],
        *,
        load_size: int,
        skip_bad_images: bool = True,
    ) -> None:
        self.root, self.cache_dir, self.indices = root, cache_dir, list(indices)
        self.load_size, self.skip_bad_images = load_size, skip_bad_images
        self._reader: Any = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reader": None}

    def record(self, i: int) -> dict[str, Any]:
        if self._reader is None:
            self._reader = _open(self.root, self.cache_dir)
        return self._reader[int(self.indices[i])]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from torchvision import transforms as T

        tf = T.Compose([T.Resize(self.load_size), T.CenterCrop(self.load_size), T.PILToTensor()])
        for k in range(MAX_TRIES):
            record = self.record((i + k) % len(self.indices))
            try:
                with Image.open(io.BytesIO(record["image"])) as image:
                    return tf(image.convert("RGB")), int(record["label"])
            except UNREADABLE as err:
                bad_image(f"{self.root}#{record['id']}", err, self.skip_bad_images)
        raise ConfigError(f"data.root: {MAX_TRIES} consecutive records of {self.root} could not be read")


def held_out(count: int, fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """(training, held-out) record indices: a seeded ``fraction`` held out (at least one when > 0), both sorted."""
    check(
        is_number(fraction) and 0 <= fraction < 1,
        f"data.val_fraction must be in [0, 1), got {fraction!r}",
    )
    k = min(count - 1, max(1, round(count * fraction))) if fraction > 0 else 0
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[k:]), sorted(order[:k])


def loader_state(loader: Any, *, epoch: int, batches: int, processes: int) -> dict[str, Any]:
    """LitData's loader state at ``batches`` batches into ``epoch`` (Lightning's count; LitData counts epochs
    from 1): built from the loader's own state so that its format stays LitData's."""
    state = loader.state_dict()
    images = batches * int(loader.batch_size)  # per rank
    workers = max(int(loader.num_workers), 1)
    dataset = dict(state["dataset"])
    dataset.update(
        num_samples_yielded=images,
        current_epoch=epoch + 1,
        sample_in_epoch=images * processes,
        world_size=processes,
    )
    return {
        "dataset": dataset,
        "current_epoch": epoch + 1,
        "num_samples_yielded": images,
        "latest_worker_idx": (batches - 1) % workers,
    }


class ShardDataModule(FolderDataModule):
    """Shards written by ``python -m cssl.shard`` (``data=shards``): a local folder or an object-store URL
    (``s3://``, ``gs://``, ``azure://``; ``local:PATH`` for a local folder read as a remote, with the cache).

    Everything the folder path does (views cut from the original on the workers or the device, bad records
    skipped and counted, preview, linear evaluation, label-free validation without labels) through
    :class:`FolderDataModule`'s hooks; only the sets and the training loader differ.

    Args:
        root: the shard folder or URL.
        eval_root: held-out shards (e.g. ``val/`` converted with the same classes); null: hold out
            ``val_fraction`` of ``root``'s records (seeded, the same in every run), never trained on.
        val_fraction: the held-out fraction of ``root`` without ``eval_root``.
        cache_dir: the local cache of a remote root's chunks (null: LitData's default cache folder).
    """

    name = "shards"

    def __init__(
        self,
        *,
        root: str = "data",
        eval_root: str | None = None,
        val_fraction: float = 0.05,
        cache_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        held_out(10, val_fraction)  # checks the value
        check(
            eval_root is None or isinstance(eval_root, str),
            f"data.eval_root must be null or a path, got {eval_root!r}",
        )
        super().__init__(root=root, **kwargs)
        self.url, self.eval_url, self.cache_dir, self.val_fraction = str(root), eval_root, cache_dir, val_fraction
        self.indices: dict[str, list[int]] = {}
        self.count = 0
        self.train_loader: Any = None

    def _images(self, root: str, indices: Sequence[int]) -> ShardImages:
        return ShardImages(
            root, self.cache_dir, indices, load_size=self.load_size, skip_bad_images=self.skip_bad_images
        )

    def load(self) -> dict[str, Dataset]:
        manifest = read_manifest(self.url, self.cache_dir)
        self.count, classes, labels = int(manifest["count"]), list(manifest["classes"]), manifest.get("labels")
        self.num_classes = len(classes)
        if self.eval_url is not None:
            held = read_manifest(self.eval_url, self.cache_dir)
            check(
                list(held["classes"]) == classes,
                f"data.eval_root: the classes of {self.eval_url} differ from those of {self.url}; "
                "convert both with the same class folders",
            )
            train, val = list(range(self.count)), self._images(self.eval_url, range(int(held["count"])))
        else:
            check(self.val_fraction > 0, "data.val_fraction=0 needs data.eval_root (held-out shards)")
            train, held_ids = held_out(self.count, self.val_fraction)
            val = self._images(self.url, held_ids)
        labelled = [i for i in train if labels[i] >= 0] if labels else []
        check(
            self.train_split != "labelled" or bool(labelled),
            f"data: the shards at {self.url} hold no labels to train a linear probe on; convert with "
            "--labels folders|list",
        )
        self.online_probe = bool(labelled)
        held = f"{len(val)} held out ({'data.eval_root' if self.eval_url else 'data.val_fraction'})"
        if classes:
            _say(f"{self.count} records at {self.url}, {len(classes)} classes, {len(labelled)} labelled; {held}")
        else:  # no labels: kNN monitor and probe off; the held-out records give the label-free metrics
            self.val_views = True
            _say(
                f"{self.count} records at {self.url}; no labels: kNN monitor and online probe off; {held} for "
                "val/uniformity, val/alignment, val/effective_negatives, val/pair_loss"
            )
        self.indices = {"pretrain": train, "labelled": labelled}
        return {"pretrain": self._images(self.url, train), "labelled": self._images(self.url, labelled), "val": val}

    def prepare_data(self) -> None:
        ImageDataModule.prepare_data(self)  # no listing: the manifest says what the shards hold

    def _views_set(self, train: Any) -> Dataset:
        return self.sets["pretrain"] if self.sets else train  # the training stream is made by train_dataloader

    def stream(self) -> Any:
        """The training records (``self.indices[train_split]``) as a LitData stream of view items."""
        check(self.views is not None, "data=shards trains on views cut from the records (cut_views)")
        assert self.views is not None
        quiet()
        dataset = _streaming_views_class()(
            _input_dir(self.url, self.cache_dir),
            views=self.views,
            decode=self.decode,
            skip_bad_images=self.skip_bad_images,
            draw=self.seed,
            source=self.url,
            cache_dir=self.cache_dir,
            count=self.count,
            shuffle=True,
            drop_last=True,
            seed=self.seed,
        )
        indices = self.indices[self.train_split]
        return dataset if len(indices) == self.count else dataset.subset(indices)

    def train_dataloader(self) -> Any:
        if self.views is None:  # uint8 images, augmented on the device
            return super().train_dataloader()
        self._check_batch_size()
        loader = _loader_class()(
            self.stream(),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=True,
            generator=torch.Generator().manual_seed(self.seed),  # worker seeds; the global stream stays untouched
        )
        position = self._resume_position
        if position.get("loader"):  # mid-epoch: LitData's loader state at the saved batch
            loader.load_state_dict(position["loader"])
        elif position:  # at an epoch's start: LitData counts epochs from 1 and adds one per pass
            loader.current_epoch = int(position["epoch"])
        self._resume_position = {}
        self.train_loader = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        """Where training stands (as the folder path) and, mid-epoch, LitData's loader state at that batch."""
        position = super().state_dict()
        if position.get("batches") and self.train_loader is not None:
            position["loader"] = loader_state(
                self.train_loader, epoch=position["epoch"], batches=position["batches"], processes=position["processes"]
            )
        return position

    def _check_batch_size(self) -> None:
        trainer = getattr(self, "trainer", None)
        world = int(getattr(trainer, "world_size", 1) or 1)
        n = len(self.indices[self.train_split])
        check(
            n >= self.batch_size * world,
            f"data.batch_size={self.batch_size} exceeds the {n} {self.train_split} records of {self.url}"
            + (f" ({world} processes need {self.batch_size * world})" if world > 1 else "")
            + "; lower data.batch_size",
        )


DATASETS["shards"] = ShardDataModule  # registered here: the module builds on datamodules.py's image-folder hooks
