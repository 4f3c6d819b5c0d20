"""Linear evaluation: a frozen backbone (BN in eval mode) and a trained linear classifier."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from cssl.optim import OptimSettings, build_optimizer, configure_schedule, global_batch, param_groups


class LinearProbe(pl.LightningModule):
    """Linear classifier on frozen features.

    Args:
        backbone: pretrained encoder; frozen, kept in eval mode (BN uses its running statistics).
        num_classes: C.
        batch_size: images per step on one device (learning-rate scaling).
        optim: optimiser and schedule of the classifier.
        feature_norm: put an affine-free BatchNorm before the classifier (it folds into the linear map;
            it makes one learning rate work across backbones).
    """

    def __init__(
        self, backbone: nn.Module, *, num_classes: int, batch_size: int, optim: OptimSettings, feature_norm: bool = True
    ) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False).eval()
        self.batch_size, self.optim = batch_size, optim
        dim = backbone.num_features
        norm: nn.Module = nn.BatchNorm1d(dim, affine=False) if feature_norm else nn.Identity()
        self.classifier = nn.Sequential(norm, nn.Linear(dim, num_classes))
        self.top1 = MulticlassAccuracy(num_classes, average="micro", ignore_index=-1)
        self.top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro", ignore_index=-1)

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.backbone.eval()  # frozen: BN keeps its pretraining statistics
        return self

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            feats = self.backbone(x)
        return self.classifier(feats.float())

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y, ignore_index=-1)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx != 1:  # loader 0 is the labelled train split (used by the kNN mode only)
            return
        x, y = batch
        logits = self(x)
        self.top1(logits, y)
        self.top5(logits, y)
        self.log("val/top1", self.top1, add_dataloader_idx=False, prog_bar=True)
        self.log("val/top5", self.top5, add_dataloader_idx=False)

    def configure_optimizers(self) -> dict[str, Any]:
        lr = self.optim.peak_lr(global_batch(self.trainer, self.batch_size))
        groups = param_groups([self.classifier], self.optim.weight_decay, self.optim.exclude_bias_norm)
        return configure_schedule(self.trainer, build_optimizer(groups, self.optim, lr), self.optim)
