"""Fabricated data sets for every registered data module (written once per session)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.data import fabricate as F


@dataclass
class Spec:
    """How to build one data module on fabricated files and what it must then hold."""

    kwargs: dict[str, Any]
    sizes: dict[str, int]  # pretrain / labelled / val
    side: int  # side of the decoded uint8 images
    image_size: int  # side of the views
    num_classes: int
    batch_size: int  # does not divide the pretraining set (drop_last shows)
    # split -> (images (N, 3, side, side) uint8, labels (N,)) exactly as the files encode them, if known
    expected: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def _cifar10_expected() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    sizes, offset, images, labels = (7, 7, 6, 6, 6), 0, [], []
    for k, n in enumerate(sizes, start=1):
        images.append(F.cifar_expected(n, seed=k))
        labels += F.cifar10_labels(n, offset)
        offset += n
    train = (np.concatenate(images), np.array(labels))
    test = (F.cifar_expected(16, seed=0), np.array(F.cifar10_labels(16, offset)))
    return {"pretrain": train, "labelled": train, "val": test}


def _cifar100_expected() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    train = (F.cifar_expected(40, seed=11), np.array(F.cifar100_labels(40, 11)))
    test = (F.cifar_expected(20, seed=12), np.array(F.cifar100_labels(20, 12)))
    return {"pretrain": train, "labelled": train, "val": test}


def _stl10_expected() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    side, seeds = F.STL_SIDE, F.STL_SEEDS
    train = (F.planted_images(20, side, seeds["train"]), F.stl10_labels(20, seeds["train"]))
    unlabeled = F.planted_images(12, side, seeds["unlabeled"])
    pretrain = (np.concatenate([train[0], unlabeled]), np.concatenate([train[1], np.full(12, -1)]))
    test = (F.planted_images(10, side, seeds["test"]), F.stl10_labels(10, seeds["test"]))
    return {"pretrain": pretrain, "labelled": train, "val": test}


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fabricated")
    F.write_cifar10(root)
    F.write_cifar100(root)
    F.write_stl10(root)
    F.write_imagefolder(root / "images")
    from cssl.shard import shard

    shard(str(root / "images" / "train"), str(root / "shards"), labels="folders", chunk_bytes="4kb", workers=1)
    return root


@pytest.fixture(scope="session")
def specs(data_root: Path) -> dict[str, Spec]:
    common = {"root": str(data_root), "verify_checksums": False}
    return {
        "digits": Spec({}, {"pretrain": 1437, "labelled": 1437, "val": 360}, 32, 32, 10, 5),
        "lab": Spec(
            {"root": str(data_root), "train_size": 300, "val_size": 100},
            {"pretrain": 300, "labelled": 300, "val": 100},
            32,
            32,
            10,
            7,
        ),
        "cifar10": Spec(common, {"pretrain": 32, "labelled": 32, "val": 16}, 32, 32, 10, 5, _cifar10_expected()),
        "cifar100": Spec(common, {"pretrain": 40, "labelled": 40, "val": 20}, 32, 32, 100, 3, _cifar100_expected()),
        "stl10": Spec(common, {"pretrain": 32, "labelled": 20, "val": 10}, 96, 96, 10, 5, _stl10_expected()),
        "imagefolder": Spec(
            {"root": str(data_root / "images"), "image_size": 32},
            {"pretrain": 8, "labelled": 8, "val": 4},
            37,  # load_size = round(32 * 8 / 7)
            32,
            3,
            3,
        ),
        "shards": Spec(  # the imagefolder train images as shards, a quarter held out
            {"root": str(data_root / "shards"), "image_size": 32, "val_fraction": 0.25},
            {"pretrain": 6, "labelled": 6, "val": 2},
            37,
            32,
            3,
            4,
        ),
        "folder": Spec(
            {
                "root": str(data_root / "images" / "train"),
                "labels": "folders",
                "eval_root": str(data_root / "images" / "val"),
                "image_size": 32,
            },
            {"pretrain": 8, "labelled": 8, "val": 4},
            37,
            32,
            3,
            3,
        ),
    }
