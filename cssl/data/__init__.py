"""Datasets as LightningDataModules (registered by name) and on-device augmentation."""

from cssl.data.augment import EvalTransform, MultiView, ViewAugment
from cssl.data.datamodules import DATASETS, ImageDataModule, build_datamodule, list_datasets

__all__ = [
    "DATASETS",
    "EvalTransform",
    "ImageDataModule",
    "MultiView",
    "ViewAugment",
    "build_datamodule",
    "list_datasets",
]
