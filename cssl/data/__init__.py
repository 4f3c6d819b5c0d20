"""Datasets as LightningDataModules (registered by name) and on-device augmentation."""

from cssl.data.augment import EvalTransform, MultiView, ViewAugment
from cssl.data.datamodules import DATASETS, ImageDataModule, build_datamodule, list_datasets
from cssl.data.shards import ShardDataModule  # registers data=shards

__all__ = [
    "DATASETS",
    "EvalTransform",
    "ImageDataModule",
    "MultiView",
    "ShardDataModule",
    "ViewAugment",
    "build_datamodule",
    "list_datasets",
]
