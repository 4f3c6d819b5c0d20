"""Linear evaluation: a frozen backbone and a trained linear classifier, validated every
``check_val_every_n_epoch`` epochs; the accuracies of the last and of the best validated epoch. The
:class:`Classifier` base is shared with fine-tuning (:mod:`cssl.eval.finetune`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from cssl.core.errors import check, is_number
from cssl.models.optim import OptimSettings, build_optimizer, configure_schedule, global_batch, param_groups

BACKBONE_BN = ("eval", "train")


class EpochResult(NamedTuple):
    """Held-out accuracy of one validation: after ``epoch`` epochs (counted from 1) and ``step`` steps."""

    epoch: int
    step: int
    top1: float
    top5: float


def last_and_best(history: list[EpochResult]) -> dict[str, float | int]:
    """``top1_last``/``top5_last`` of the last validation and ``top1_best``/``top5_best``/``best_epoch`` of the
    validation with the highest top-1 (the first one on ties: MoCo main_lincls.py:400-401 keeps a new best only
    if strictly better).

    Example:
        >>> h = [EpochResult(1, 10, 0.5, 0.9), EpochResult(2, 20, 0.7, 0.95), EpochResult(3, 30, 0.6, 0.97)]
        >>> last_and_best(h)
        {'top1_last': 0.6, 'top5_last': 0.97, 'top1_best': 0.7, 'top5_best': 0.95, 'best_epoch': 2}
    """
    check(len(history) > 0, "linear evaluation: no validation ran (trainer.limit_val_batches=0?)")
    last = history[-1]
    best = max(history, key=lambda r: (r.top1, -r.epoch))
    return {
        "top1_last": last.top1,
        "top5_last": last.top5,
        "top1_best": best.top1,
        "top5_best": best.top5,
        "best_epoch": best.epoch,
    }


class Classifier(pl.LightningModule):
    """A backbone and a linear classifier on its pooled features, trained with cross-entropy and validated on
    held-out data; what the linear probe and fine-tuning share (subclasses say what trains).

    Every validation batch is held-out data (the data module's ``val_bank`` is off in these evaluations).

    Args:
        backbone: the encoder (``num_features`` attribute).
        num_classes: C.
        batch_size: images per step on one device (learning-rate scaling).
        optim: optimiser and schedule; ``optim.lr`` is the classifier's rate.
        feature_norm: put an affine-free BatchNorm before the classifier (it folds into the linear map;
            it makes one learning rate work across backbones).
        init_std: classifier weights ~ N(0, init_std) and bias 0 (MoCo/AdCo: 0.01; 0: all zeros, SimCLR's
            ``zero_init_logits_layer``); None: PyTorch's default.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        batch_size: int,
        optim: OptimSettings,
        feature_norm: bool = True,
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        check_probe_options("eval", init_std)
        self.backbone = backbone
        self.batch_size, self.optim = batch_size, optim
        dim = backbone.num_features
        norm: nn.Module = nn.BatchNorm1d(dim, affine=False) if feature_norm else nn.Identity()
        linear = nn.Linear(dim, num_classes)
        if init_std is not None:
            nn.init.normal_(linear.weight, std=float(init_std)) if init_std > 0 else nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
        self.classifier = nn.Sequential(norm, linear)
        self.top1 = MulticlassAccuracy(num_classes, average="micro", ignore_index=-1)
        self.top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro", ignore_index=-1)
        self.history: list[EpochResult] = []

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).float())

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y, ignore_index=-1)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.top1.update(logits, y)
        self.top5.update(logits, y)

    def on_validation_epoch_end(self) -> None:
        top1, top5 = self.top1.compute(), self.top5.compute()  # reduced over ranks
        self.top1.reset()
        self.top5.reset()
        self.log("val/top1", top1, prog_bar=True)
        self.log("val/top5", top5)
        fitting = self.trainer.state.fn == "fit"
        epoch = self.current_epoch + 1 if fitting else self.current_epoch  # epochs of training behind it
        self.history.append(EpochResult(epoch, int(self.global_step), float(top1), float(top5)))

    def optimizer_groups(self, lr: float) -> list[dict]:
        """The parameter groups to train at peak rate ``lr`` (the classifier's; a group may carry its own)."""
        return [
            {**g, "lr": lr}
            for g in param_groups([self.classifier], self.optim.weight_decay, self.optim.exclude_bias_norm)
        ]

    def configure_optimizers(self) -> dict[str, Any]:
        lr = self.optim.peak_lr(global_batch(self.trainer, self.batch_size))
        return configure_schedule(self.trainer, build_optimizer(self.optimizer_groups(lr), self.optim, lr), self.optim)


class LinearProbe(Classifier):
    """Linear classifier on frozen features.

    Args:
        backbone_bn: ``eval``: BN keeps the pretraining statistics while training the classifier (MoCo,
            AdCo); ``train``: BN in train mode during training (batch statistics, running statistics
            re-estimated; DCL/HCL linear.py's ``net.train()``), eval mode when validating.
        **kwargs: those of :class:`Classifier`.
    """

    def __init__(self, backbone: nn.Module, *, backbone_bn: str = "eval", **kwargs: Any) -> None:
        check_probe_options(backbone_bn, kwargs.get("init_std"))
        super().__init__(backbone.requires_grad_(False).eval(), **kwargs)
        self.backbone_bn = backbone_bn

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        # frozen weights; with backbone_bn=eval BN also keeps its pretraining statistics
        self.backbone.train(mode and self.backbone_bn == "train")
        return self

    def features(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.backbone(x)


def check_probe_options(backbone_bn: Any, init_std: Any) -> None:
    """One-line errors for the probe's options (called before any work)."""
    check(backbone_bn in BACKBONE_BN, f"backbone_bn must be one of {', '.join(BACKBONE_BN)}, got {backbone_bn!r}")
    check(
        init_std is None or (is_number(init_std) and init_std >= 0),
        f"init_std must be null or >= 0 (0: zeros), got {init_std!r}",
    )
