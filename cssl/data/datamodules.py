"""LightningDataModules registered by name. Loaders decode and collate uint8 images only; views are
produced on the device by the transforms handed in (see :mod:`cssl.data.augment`).

Every module exposes three labelled/unlabelled sets:

- ``pretrain``: what self-supervised training sees (STL-10: train + unlabeled, label -1 when unknown);
- ``labelled``: the labelled training split (kNN bank, linear probe training);
- ``val``: the held-out labelled split (reported accuracy).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from cssl.core.errors import ConfigError, check, check_int, is_int, is_number
from cssl.data.augment import EvalTransform
from cssl.data.digits import digits_split
from cssl.data.folder import FolderViews, ImageList, replace_bad
from cssl.data.lab import lab_options, load_or_generate
from cssl.data.listing import LABELS, Listing, build_index, check_request, list_images, read_index, say
from cssl.data.plan import ViewPlan
from cssl.data.resumable import resumed_sampler, train_position
from cssl.data.views import ViewSpec, decode_on_device
from cssl.models.backbones import auto_cifar_stem

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ArrayDataset(Dataset):
    """uint8 images (N, C, H, W) and int64 labels (N,) held in memory."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], self.labels[i]


class ImageDataModule(pl.LightningDataModule):
    """Base: loaders, on-device transforms and validation of the options.

    Args:
        root: dataset folder.
        batch_size: images per step on one device (>= 2).
        num_workers: loader processes.
        download: fetch the dataset if missing (needs a network).
        image_size: side of the views and of evaluation images.
        views: the training views (:class:`~cssl.data.plan.ViewPlan`), built here for this data's image size
            and normalisation (image folders: cut from the original images on the loader workers).
        train_transform: instead of ``views``, an on-device module, uint8 batch -> list of views or one tensor.
        eval_transform: on-device module, uint8 batch -> normalised tensor; default: resize (or centre crop) to
            ``eval_image_size`` and normalise.
        val_views: validation batches of held-out images also carry two training views (``val/alignment``).
        val_bank: validation starts with the labelled train split (the kNN bank); off in linear evaluation.
        seed: of the training order (a function of seed, epoch and rank).
        train_split: ``"pretrain"`` or ``"labelled"`` (linear evaluation) for the training loader.
        bank_limit: cap on the number of labelled images used as the kNN bank during validation.
        verify_checksums: check the published MD5 sums of downloaded archives' files.
        pin_memory: pin host memory for faster copies to an accelerator.
        eval_image_size: side of the evaluation images (kNN monitor, linear-evaluation test set); None:
            ``image_size`` (e.g. STL-10 evaluated at its native 96 px after pretraining at 32, as DCL/HCL).
        mean, std: per-channel normalisation constants; None: the dataset's defaults below.
    """

    name = "base"
    num_classes = 0
    native_size = 0
    mean = IMAGENET_MEAN
    std = IMAGENET_STD
    center_crop_eval = False
    online_probe = True  # whether the training images carry the held-out set's labels (the online probe learns)

    def __init__(
        self,
        *,
        root: str = "data",
        batch_size: int = 256,
        num_workers: int = 0,
        download: bool = False,
        image_size: int | None = None,
        views: ViewPlan | None = None,
        train_transform: Callable[[Tensor], Any] | None = None,
        eval_transform: Callable[[Tensor], Tensor] | None = None,
        val_views: bool = False,
        val_bank: bool = True,
        seed: int = 0,
        train_split: str = "pretrain",
        bank_limit: int | None = None,
        verify_checksums: bool = True,
        pin_memory: bool = False,
        eval_batch_size: int | None = None,
        eval_image_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        check_int("data.batch_size", batch_size, 2)
        check_int("data.num_workers", num_workers, 0)
        check_int("data.eval_batch_size", eval_batch_size, 1, allow_none=True)
        check_int("data.image_size", image_size, 8, allow_none=True)
        check_int("data.eval_image_size", eval_image_size, 8, allow_none=True)
        for key, values in (("mean", mean), ("std", std)):
            check(
                values is None
                or (
                    isinstance(values, Sequence)
                    and not isinstance(values, str)
                    and len(values) == 3
                    and all(is_number(v) and (v > 0 if key == "std" else True) for v in values)
                ),
                f"data.{key} must be null or 3 numbers{' > 0' if key == 'std' else ''}, got {values!r}",
            )
        check(train_split in ("pretrain", "labelled"), f"train_split must be pretrain or labelled, got {train_split!r}")
        check(
            bank_limit is None or (isinstance(bank_limit, int) and bank_limit > 0),
            f"data.bank_limit must be null or > 0, got {bank_limit!r}",
        )
        self.root = Path(os.path.expanduser(str(root)))
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.download = download
        self.image_size = image_size or self.native_size
        self.eval_image_size = eval_image_size or self.image_size
        if mean is not None:
            self.mean = tuple(float(v) for v in mean)
        if std is not None:
            self.std = tuple(float(v) for v in std)
        self.views_plan = views
        self.train_transform = views.transform(self.image_size, self.mean, self.std) if views else train_transform
        self.eval_transform = eval_transform or EvalTransform(
            self.eval_image_size, center_crop=self.center_crop_eval, mean=self.mean, std=self.std
        )
        self.train_split = train_split
        self.bank_limit = bank_limit
        self.verify_checksums = verify_checksums
        self.pin_memory = pin_memory
        self.sets: dict[str, Dataset] = {}
        self.val_views = val_views  # held-out images also as two training views (val/alignment)
        self.val_bank = val_bank  # validation starts with the labelled train split (kNN bank); off in linear evaluation
        self.seed = seed  # of the training order: a function of (seed, epoch, rank)
        self._resume_position: dict[str, Any] = {}

    # -- what subclasses provide -------------------------------------------------------------------
    def load(self) -> dict[str, Dataset]:
        """Return {"pretrain", "labelled", "val"} datasets of (uint8 (C, H, W), int label)."""
        raise NotImplementedError

    @property
    def default_cifar_stem(self) -> bool:
        """Whether a ResNet should use the CIFAR stem for this data when the user does not say."""
        return auto_cifar_stem(self.image_size)

    # -- Lightning hooks ----------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.download:
            self.fetch()

    def fetch(self) -> None:
        """Download the dataset (subclasses that can download override this)."""

    def setup(self, stage: str | None = None) -> None:
        if not self.sets:
            self.sets = self.load()

    def check(self) -> None:
        """Load the data now, turning a missing dataset or a batch larger than it into a one-line
        :class:`ConfigError`."""
        if self.download:
            self.fetch()
        self.setup()
        self._check_batch_size()

    def _check_batch_size(self) -> None:
        trainer = getattr(self, "trainer", None)
        world = int(getattr(trainer, "world_size", 1) or 1)
        n = len(self.sets[self.train_split])
        per_rank = "" if world == 1 else f" ({world} processes need {self.batch_size * world})"
        check(
            n >= self.batch_size * world,
            f"data.batch_size={self.batch_size} exceeds the {n} {self.train_split} images of {self.name}{per_rank}; "
            "lower data.batch_size",
        )

    def _loader(self, dataset: Dataset, *, train: bool) -> DataLoader:
        sampler = None
        if train:  # an order given by (seed, epoch, rank) that can start mid-epoch (cssl.data.resumable)
            trainer = getattr(self, "trainer", None)
            sampler = resumed_sampler(
                dataset,
                self._resume_position,
                batch_size=self.batch_size,
                num_replicas=int(getattr(trainer, "world_size", 1) or 1),
                rank=int(getattr(trainer, "global_rank", 0) or 0),
                seed=self.seed,
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),  # worker seeds; the global stream stays untouched
        )

    def state_dict(self) -> dict[str, Any]:
        """Where training stands in its epoch (saved in checkpoints; see :mod:`cssl.data.resumable`)."""
        return train_position(getattr(self, "trainer", None))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_position = dict(state_dict)

    def train_dataloader(self) -> DataLoader:
        self._check_batch_size()
        return self._loader(self.sets[self.train_split], train=True)

    def bank_dataset(self) -> Dataset:
        bank = self.sets["labelled"]
        if self.bank_limit is not None and self.bank_limit < len(bank):
            g = torch.Generator().manual_seed(0)
            bank = Subset(bank, torch.randperm(len(bank), generator=g)[: self.bank_limit].tolist())
        return bank

    def val_dataloader(self) -> list[DataLoader]:
        """[labelled train images (kNN bank), held-out images]; only the held-out images without ``val_bank``."""
        held_out = self._loader(self.sets["val"], train=False)
        return [self._loader(self.bank_dataset(), train=False), held_out] if self.val_bank else [held_out]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch
        trainer = getattr(self, "trainer", None)
        training = trainer is not None and trainer.training
        if training and self.train_transform is not None:
            return self.train_transform(x), y
        if self.eval_transform is not None:
            if self.val_views and dataloader_idx == 1 and self.train_transform is not None:
                # held-out images also as two training views: positive pairs for val/alignment
                return self.eval_transform(x), y, self.train_transform(x)[:2]
            return self.eval_transform(x), y
        return batch


class DigitsDataModule(ImageDataModule):
    """scikit-learn's bundled 8x8 digits, upsampled to ``image_size`` (32), RGB; a fixed stratified
    80/20 split (1437 / 360 images). Needs no download: the embedded default."""

    name = "digits"
    num_classes = 10
    native_size = 32
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    @property
    def default_cifar_stem(self) -> bool:
        # The images carry 8 px of information: the ImageNet stem's 4x downsampling loses nothing and
        # is ~15x cheaper than the CIFAR stem at 32 px.
        return False

    def load(self) -> dict[str, Dataset]:
        def upsampled(images: Tensor) -> Tensor:
            images = torch.nn.functional.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear")
            return images.clamp(0, 1).mul(255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()

        (train_images, train_labels), (val_images, val_labels) = digits_split()
        train = ArrayDataset(upsampled(train_images), train_labels)
        return {"pretrain": train, "labelled": train, "val": ArrayDataset(upsampled(val_images), val_labels)}


class LabDataModule(ImageDataModule):
    """The lab dataset (:mod:`cssl.data.lab`): digits at random scales, positions and grey levels, generated
    from ``generator_seed`` and cached under ``root/lab/``. Hard for raw pixels and random features,
    learnable by contrastive pretraining; no download."""

    name = "lab"
    num_classes = 10
    native_size = 32
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(
        self,
        *,
        generator_seed: int = 0,
        train_size: int = 2000,
        val_size: int = 1000,
        glyph_scale: Sequence[float] = (0.4, 0.85),
        min_contrast: float = 0.35,
        rotation: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.options = lab_options(
            generator_seed=generator_seed,
            train_size=train_size,
            val_size=val_size,
            glyph_scale=glyph_scale,
            min_contrast=min_contrast,
            rotation=rotation,
            image_size=self.image_size,  # drawn at the size asked for, not resampled
        )

    @property
    def default_cifar_stem(self) -> bool:
        return False  # as digits: the glyphs carry 8 px of detail; the ImageNet stem loses little, 15x cheaper

    def load(self) -> dict[str, Dataset]:
        data = load_or_generate(self.root, self.options)
        train = ArrayDataset(data["train_images"], data["train_labels"])
        return {"pretrain": train, "labelled": train, "val": ArrayDataset(data["val_images"], data["val_labels"])}


def _checked_labels(labels: Tensor, module: ImageDataModule, *, unlabelled_ok: bool = False) -> Tensor:
    """Labels in [0, num_classes) (or -1 where ``unlabelled_ok``); anything else means foreign files."""
    low = -1 if unlabelled_ok else 0
    if labels.numel() and (int(labels.min()) < low or int(labels.max()) >= module.num_classes):
        raise ConfigError(
            f"data.root: {module.name} labels under {module.root} range over [{int(labels.min())}, "
            f"{int(labels.max())}], not [0, {module.num_classes}); replace the files with the official ones"
        )
    return labels


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _unverified(cls: type) -> type:
    """A torchvision dataset class that only checks that its files exist (data.verify_checksums=false, or
    files already verified once by :meth:`TorchvisionDataModule.locate`)."""

    class Unverified(cls):  # type: ignore[misc, valid-type]
        def _check_integrity(self) -> bool:
            files = [f for f, _ in self.train_list + self.test_list]
            return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f in files)

        def _load_meta(self) -> None:
            import pickle

            path = os.path.join(self.root, self.base_folder, self.meta["filename"])
            with open(path, "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    Unverified.__name__ = cls.__name__
    return Unverified


class TorchvisionDataModule(ImageDataModule):
    """Base of the data sets read by torchvision's own classes from their official files.

    The files are looked up once (:meth:`locate`) with messages that say what is missing and how to fix it;
    with ``verify_checksums`` their published MD5 sums are checked once, then torchvision reads them
    without hashing them again.
    """

    def _tv_class(self) -> type:
        raise NotImplementedError

    def _files(self) -> list[tuple[str, str]]:
        """(file name, published MD5) of every file torchvision needs, relative to its folder."""
        cls = self._tv_class()
        files = [(f, md5) for f, md5 in cls.train_list + cls.test_list]
        meta = getattr(cls, "meta", None)
        if meta:
            files.append((meta["filename"], meta["md5"]))
        return files

    @property
    def folder(self) -> Path:
        return self.root / self._tv_class().base_folder

    def _missing(self) -> list[str]:
        return [f for f, _ in self._files() if not (self.folder / f).is_file()]

    def locate(self) -> None:
        """Check that the files are present (and match their MD5 sums if ``verify_checksums``)."""
        if getattr(self, "_located", False):
            return
        missing = self._missing()
        if missing:
            if not self.folder.is_dir():
                what = f"{self.folder} does not exist"
            elif len(missing) == len(self._files()):
                what = f"{self.folder} holds none of its files"
            else:
                what = f"{self.folder} lacks {', '.join(missing)}"
            raise ConfigError(
                f"data.root: {self.name} not found: {what}; set data.root to the folder that contains "
                f"{self.folder.name}/ (or data.download=true to fetch it)"
            )
        if self.verify_checksums:
            from torchvision.datasets.utils import check_integrity

            bad = [f for f, md5 in self._files() if not check_integrity(str(self.folder / f), md5)]
            if bad:
                raise ConfigError(
                    f"data.verify_checksums: {', '.join(bad)} under {self.folder} do not match the published MD5 "
                    f"sums of {self.name}; download the data again, or set data.verify_checksums=false to use "
                    "these files as they are"
                )
        self._located = True

    def _open(self, **kwargs: Any) -> Any:
        """The torchvision data set of ``kwargs`` (split), from files already located."""
        self.locate()
        try:
            return _unverified(self._tv_class())(str(self.root), download=False, **kwargs)
        except Exception as err:  # a truncated or foreign file: pickle, numpy or torchvision errors
            raise ConfigError(
                f"data.root: could not read {self.name} from {self.folder} ({_one_line(err)}); "
                "replace the files with the official ones"
            ) from None

    def fetch(self) -> None:
        """Download and extract the official archive into ``root`` unless the files are already there."""
        if not self._missing():
            return
        import tarfile

        from torchvision.datasets import utils as tv_utils

        cls = self._tv_class()
        try:
            tv_utils.download_and_extract_archive(cls.url, str(self.root), filename=cls.filename, md5=cls.tgz_md5)
        except (OSError, RuntimeError, EOFError, tarfile.TarError) as err:  # URLError is an OSError
            raise ConfigError(
                f"data.download: could not download {self.name} from {cls.url} into {self.root} ({_one_line(err)}); "
                f"check the network, or fetch and extract the archive by hand and set data.root to the folder "
                f"that contains {cls.base_folder}/"
            ) from None


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10 from the official python pickle batches (``<root>/cifar-10-batches-py``)."""

    name = "cifar10"
    num_classes = 10
    native_size = 32
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)

    def _tv_class(self) -> type:
        from torchvision.datasets import CIFAR10

        return CIFAR10

    def load(self) -> dict[str, Dataset]:
        def to_set(d: Any) -> ArrayDataset:
            images = torch.from_numpy(np.ascontiguousarray(d.data.transpose(0, 3, 1, 2)))  # (N, 3, 32, 32) uint8
            return ArrayDataset(images, _checked_labels(torch.as_tensor(d.targets, dtype=torch.long), self))

        train_set = to_set(self._open(train=True))
        return {"pretrain": train_set, "labelled": train_set, "val": to_set(self._open(train=False))}


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (fine labels) from ``<root>/cifar-100-python``."""

    name = "cifar100"
    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)

    def _tv_class(self) -> type:
        from torchvision.datasets import CIFAR100

        return CIFAR100


class STL10DataModule(TorchvisionDataModule):
    """STL-10 from the official binaries (``<root>/stl10_binary``): pretraining on train + unlabeled
    (100k unlabelled images, label -1), evaluation on the 5k train / 8k test images."""

    name = "stl10"
    num_classes = 10
    native_size = 96
    mean = (0.4467, 0.4398, 0.4066)
    std = (0.2603, 0.2566, 0.2713)

    def _tv_class(self) -> type:
        from torchvision.datasets import STL10

        return STL10

    def load(self) -> dict[str, Dataset]:
        def to_set(d: Any) -> ArrayDataset:
            images = torch.from_numpy(np.ascontiguousarray(d.data))  # (N, 3, 96, 96) uint8, rows first
            labels = torch.from_numpy(d.labels.astype(np.int64))
            return ArrayDataset(images, _checked_labels(labels, self, unlabelled_ok=d.split == "unlabeled"))

        sets: dict[str, Dataset] = {
            "labelled": to_set(self._open(split="train")),
            "val": to_set(self._open(split="test")),
        }
        if self.train_split == "pretrain":  # train + unlabeled without a second copy of train
            sets["pretrain"] = ConcatDataset([sets["labelled"], to_set(self._open(split="unlabeled"))])
        else:
            sets["pretrain"] = sets["labelled"]
        return sets


class FolderDataModule(ImageDataModule):
    """Your own images: a folder at any depth (``root``) or a file list (``files``), labels optional
    (:mod:`cssl.data.listing` says what is listed, skipped and cached).

    Pretraining and linear-probe training (after :meth:`cut_views`): every view's random resized crop is
    taken from the original image on the loader workers (``decode="cpu"``) or on the device
    (``decode="gpu"``), antialiased, and only the photometric augmentation runs on the device
    (:mod:`cssl.data.views`). Evaluation and the kNN bank: images resized (shorter side) and centre-cropped
    to ``load_size`` so that they collate (then centre-cropped to ``image_size`` on the device).

    Held-out images and monitors:

    - ``eval_root`` (class folders) or ``eval_files`` (a list with labels) is the held-out set. When the
      training images carry labels, the kNN bank is the labelled training images and the online probe learns
      from them; when they do not, the held-out set is split in two (seeded, half and half): the kNN bank and
      the queries; the online probe is then off (``val/online_top1`` is not logged).
    - Without one, a seeded slice of ``val_fraction`` of the training images (of the labelled ones when there
      are labels) is held out of pretraining and is the validation set.
    - Without labels anywhere, ``num_classes`` is 0: the kNN monitor and the online probe are off, and
      validation logs the label-free ``val/uniformity``, ``val/alignment``, ``val/effective_negatives`` and
      ``val/pair_loss`` on the held-out slice.

    Args:
        root: a folder of images (any depth); or ``files``: a text or CSV list of images.
        labels: ``none``, ``folders`` (first-level subfolders) or ``list`` (the list's label column).
        index: where a folder's listing is cached: ``auto``, ``rebuild``, ``off`` or a file path.
        eval_root, eval_files: the labelled held-out set (class folders; or a list with labels).
        val_fraction: the share held out of pretraining when there is no held-out set.
        load_size: side of the decoded evaluation images; default ``image_size * 8 / 7`` (256 for 224).
        decode: where pretraining views are decoded and cut: ``"cpu"`` (loader workers) or ``"gpu"``
            (``torchvision.io.decode_jpeg`` on the training device, CPU fallback per refused file).
        skip_bad_images: replace an unreadable file by another one and count it (``data/skipped_images``);
            false makes it an error naming the file.
    """

    name = "folder"
    native_size = 224
    center_crop_eval = True
    split_seed = 0  # of the held-out slices: the same images whatever the run's seed

    def __init__(
        self,
        *,
        root: str | None = None,
        files: str | None = None,
        labels: str = "none",
        index: str = "auto",
        eval_root: str | None = None,
        eval_files: str | None = None,
        val_fraction: float = 0.05,
        load_size: int | None = None,
        decode: str = "cpu",
        skip_bad_images: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(root="." if root is None else root, **kwargs)
        check(decode in ("cpu", "gpu"), f"data.decode must be cpu or gpu, got {decode!r}")
        check(isinstance(skip_bad_images, bool), f"data.skip_bad_images must be true or false, got {skip_bad_images!r}")
        check(labels in LABELS, f"data.labels must be one of {', '.join(LABELS)}, got {labels!r}")
        check(isinstance(index, str) and index != "", f"data.index must be auto, rebuild, off or a path, got {index!r}")
        check(
            is_number(val_fraction) and 0 < val_fraction < 1,
            f"data.val_fraction must be a number in (0, 1), got {val_fraction!r}",
        )
        check(eval_root is None or eval_files is None, "data: give at most one of data.eval_root and data.eval_files")
        self.source = None if root is None else os.path.abspath(os.path.expanduser(str(root)))
        self.files = None if files is None else os.path.expanduser(str(files))
        self.labels, self.index, self.val_fraction = labels, index, float(val_fraction)
        self.eval_root = None if eval_root is None else os.path.abspath(os.path.expanduser(str(eval_root)))
        self.eval_files = None if eval_files is None else os.path.expanduser(str(eval_files))
        self.decode, self.skip_bad_images = decode, skip_bad_images
        self.views: list[ViewSpec] | None = None  # set by cut_views
        self.view_augment: Any = None
        self.skipped_images: Tensor | None = None  # unreadable files replaced in the last training batch
        self.listing: Listing | None = None  # of the training images, once listed
        self._held_listing: Listing | None = None  # of the held-out images (eval_root / eval_files), once listed
        check(
            load_size is None or (is_int(load_size) and load_size >= self.image_size),
            f"data.load_size must be null or an integer >= data.image_size={self.image_size}, got {load_size!r}",
        )
        self.load_size = load_size or round(self.image_size * 8 / 7)
        self.num_classes = 0
        self._pretrain_base: Any = None  # the set whose samples the views are cut from
        if self.views_plan is not None:  # the training views are cut from the original images on the workers
            plan = self.views_plan
            self.cut_views(
                plan.specs(self.image_size), plan.transform(self.image_size, self.mean, self.std, crop=False)
            )

    # -- listing: made once (prepare_data, the first process of a node), read by the others --------------
    def _first_process(self) -> bool:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return int(getattr(trainer, "local_rank", 0) or 0) == 0
        return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")) or 0) == 0

    def prepare_data(self) -> None:
        for root in (self.source if self.files is None else None, self.eval_root):
            if root is not None and os.path.isdir(root) and self.index != "off":
                build_index(root, self.index)

    def _list(self, *, root: str | None, files: str | None, labels: str, index: str) -> Listing:
        if files is not None or index == "off" or self._first_process():
            return list_images(root=root, files=files, labels=labels, index=index)
        check_request(root, files, labels)
        listing = read_index(root=str(root), labels=labels, index=index, wait_s=600.0)
        if listing is None:  # the first process could write no index
            say(f"no index of {root} to read; listing it in this process too")
            return list_images(root=root, labels=labels, index="off")
        return listing

    def _eval_listing(self) -> Listing | None:
        if self.eval_root is None and self.eval_files is None:
            return None
        self._held_listing = self._list_held()
        return self._held_listing

    def _list_held(self) -> Listing:
        key = "data.eval_root" if self.eval_root is not None else "data.eval_files"
        listing = self._list(
            root=self.eval_root,
            files=self.eval_files,
            labels="folders" if self.eval_root is not None else "list",
            index=self.index if self.index in ("auto", "rebuild", "off") else "auto",
        )
        check(
            len(listing.classes) >= 2 and listing.labelled,
            f"{key}: {listing.source} has {len(listing.classes)} labelled classes; the held-out set needs labels "
            "of at least 2 classes (class folders, or a list with a label column)",
        )
        return listing

    def _images(self, samples: list[tuple[str, int]], classes: list[str], source: str) -> ImageList:
        from torchvision import transforms as T

        tf = T.Compose([T.Resize(self.load_size), T.CenterCrop(self.load_size), T.PILToTensor()])
        return ImageList(samples, transform=tf, classes=classes, skip_bad_images=self.skip_bad_images, source=source)

    def _held_out(self, samples: list[tuple[str, int]], fraction: float) -> tuple[list, list]:
        """(kept, held out): a seeded ``fraction`` (at least one image) of ``samples`` held out."""
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        n = min(len(samples) - 1, max(1, round(len(samples) * fraction)))
        out = set(order[:n])
        return [s for i, s in enumerate(samples) if i not in out], [s for i, s in enumerate(samples) if i in out]

    def load(self) -> dict[str, Dataset]:
        train = self._list(root=self.source, files=self.files, labels=self.labels, index=self.index)
        self.listing = train
        held = self._eval_listing()
        lines = [train.summary()]
        if len(train.classes) == 1:
            raise ConfigError(f"data.labels={self.labels}: {train.source} gives one class only; use data.labels=none")
        labelled = train.labelled if len(train.classes) >= 2 else []
        pretrain = train.samples
        if held is not None and labelled:
            names = set(train.classes)
            unknown = sorted({held.classes[y] for _, y in held.labelled} - names)
            check(
                not unknown,
                f"data: the held-out set {held.source} has classes the training labels lack ({', '.join(unknown[:5])}); "
                "give both the same classes",
            )
            to_train = {i: train.classes.index(c) for i, c in enumerate(held.classes)}
            classes, bank = train.classes, labelled
            val = [(p, to_train[y]) for p, y in held.labelled]
        elif held is not None:  # labels only in the held-out set: half the kNN bank, half the queries
            classes = held.classes
            bank, val = self._held_out(held.labelled, 0.5)
            self.online_probe = False
            lines.append(f"labels only in {held.source}: kNN monitor on halves of it, online probe off")
        elif labelled:
            keep, val = self._held_out(labelled, self.val_fraction)
            out = {p for p, _ in val}
            classes, bank, pretrain = train.classes, keep, [s for s in train.samples if s[0] not in out]
            lines.append(f"{len(val)} labelled images held out for validation (data.val_fraction)")
        else:
            pretrain, val = self._held_out(train.samples, self.val_fraction)
            classes, bank = [], []
            self.online_probe = False
            self.val_views = True  # the label-free metrics include the alignment of view pairs
            lines.append(
                f"no labels: kNN monitor and online probe off; {len(val)} images held out (data.val_fraction) "
                "for val/uniformity, val/alignment, val/effective_negatives, val/pair_loss"
            )
        self.num_classes = len(classes)
        if self.train_split == "labelled" and not self.num_classes:
            raise ConfigError(
                f"data: {train.source} has no labels to train a linear probe on; give data.eval_root=CLASS_FOLDERS, "
                "data.eval_files=LIST or data.labels=folders|list"
            )
        _say_once(lines)
        self._pretrain_base = self._images(pretrain, classes, train.source)
        sets: dict[str, Dataset] = {
            "labelled": self._images(bank, classes, train.source),
            "val": self._images(val, classes, held.source if held is not None else train.source),
        }
        sets["pretrain"] = self._views_set(self._pretrain_base)
        return sets

    def val_dataloader(self) -> list[DataLoader]:
        if self.num_classes == 0:  # no labels: the held-out slice only (label-free metrics)
            return [self._loader(self.sets["val"], train=False)]
        return super().val_dataloader()

    # -- views cut from the original images ---------------------------------------------------------------
    def cut_views(self, views: list[ViewSpec], augment: Any) -> None:
        """Pretrain on views cut from the original images: ``views`` (side and crop scale of each, in the
        order of ``augment``'s views) are cut on the loader workers (or on the device with ``decode="gpu"``)
        and ``augment`` (a :class:`MultiView` of ``ViewAugment(crop=False)``) adds the photometric part on
        the device. ``train_transform`` then serves only the validation view pairs.

        ``augment`` may also be one ``ViewAugment(crop=False)`` for a single view: batches are then one tensor
        (B, 3, S, S), as linear-probe training (``train_split="labelled"``) takes them."""
        count = len(augment.views) if hasattr(augment, "views") else 1
        check(len(views) == count, f"cut_views: {len(views)} views but {count} augmentations")
        self.views, self.view_augment = list(views), augment
        if self.sets:
            self.sets["pretrain"] = self._views_set(self._pretrain_base)

    def _views_set(self, train: Any) -> Dataset:
        if self.views is None or self.train_split != "pretrain":
            return train
        return FolderViews(train.samples, self.views, decode=self.decode, skip_bad_images=self.skip_bad_images)

    def train_dataloader(self) -> DataLoader:
        if self.views is None or self.train_split == "pretrain":
            return super().train_dataloader()
        # e.g. linear-probe training on the labelled split: its crops also cut from the original images
        self._check_batch_size()
        train = self.sets[self.train_split]
        views = FolderViews(train.samples, self.views, decode=self.decode, skip_bad_images=self.skip_bad_images)
        return self._loader(views, train=True)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = getattr(self, "trainer", None)
        if not (trainer is not None and trainer.training and self.views is not None and len(batch) == 3):
            held_out = 1 if self.num_classes == 0 else dataloader_idx  # unlabelled: the only loader is held out
            return super().on_after_batch_transfer(batch, held_out)
        payload, y, skipped = batch  # views cut on the workers, or encoded files for the device decoder
        if self.decode == "gpu":
            views, bad = decode_on_device(
                payload["data"], payload["boxes"], self.views, y.device, payload["device_jpeg"]
            )
            replace_bad(views, y, bad, payload["path"], self.skip_bad_images)
            skipped = skipped + bad
        else:
            views = payload
        self.skipped_images = skipped.sum()
        if not hasattr(self.view_augment, "views"):  # a single view: one tensor (B, 3, S, S)
            (view,) = views
            return self.view_augment(view), y
        return [augment(v) for augment, v in zip(self.view_augment.views, views, strict=True)], y


@rank_zero_only
def _say_once(lines: list[str]) -> None:
    for line in lines:
        say(line)


class ImageFolderDataModule(FolderDataModule):
    """The ImageNet layout of :class:`FolderDataModule`: ``root/train`` and ``root/val`` class-per-folder
    trees (ImageNet, ImageNet-100, ...), labelled by their folders; the same listing (cached in an index,
    other files skipped and counted), views and loaders, with ``val`` as the held-out set. Train and val must
    have the same classes (a class folder left empty on one side is a one-line error).

    Args:
        train_dir, val_dir: folders under ``root`` (or absolute paths).
        index, load_size, decode, skip_bad_images: as :class:`FolderDataModule`.
    """

    name = "imagefolder"

    def __init__(self, *, root: str = "data", train_dir: str = "train", val_dir: str = "val", **kwargs: Any) -> None:
        base = Path(os.path.expanduser(str(root)))
        self.train_dir, self.val_dir = base / train_dir, base / val_dir
        super().__init__(root=str(self.train_dir), eval_root=str(self.val_dir), labels="folders", **kwargs)
        self.root = base

    def load(self) -> dict[str, Dataset]:
        for folder in (self.train_dir, self.val_dir):
            if not folder.is_dir():
                raise ConfigError(
                    f"data.root: image folder {folder} does not exist; set data.root to the folder that holds the "
                    f"{self.train_dir.name}/ and {self.val_dir.name}/ class folders (or data.train_dir / data.val_dir)"
                )
        sets = super().load()
        train, val = self.listing, self._held_listing
        assert train is not None and val is not None
        if train.classes != val.classes:
            only_train = sorted(set(train.classes) - set(val.classes))
            only_val = sorted(set(val.classes) - set(train.classes))
            raise ConfigError(
                f"data.val_dir: the class folders with images of {self.val_dir} differ from those of "
                f"{self.train_dir} (only in train: {only_train or 'none'}; only in val: {only_val or 'none'}); "
                "give both the same class folders, each with images"
            )
        return sets


DATASETS: dict[str, type[ImageDataModule]] = {
    "digits": DigitsDataModule,
    "lab": LabDataModule,
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "stl10": STL10DataModule,
    "imagefolder": ImageFolderDataModule,
    "folder": FolderDataModule,
}


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def build_datamodule(name: str, **kwargs: Any) -> ImageDataModule:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}: choose data= one of {', '.join(list_datasets())}")
    return DATASETS[name](**kwargs)
