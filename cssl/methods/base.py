"""The one small base class of every method: backbone, views, online probe and kNN monitor, optimiser and
schedule, speed options, checkpoint metadata, and the EMA step of every (online, target) momentum pair once
per optimiser step. It knows nothing about negatives or datasets: batches arrive as (views, labels), views
already augmented on the device by the data module in the layout the method declared (:class:`ViewNeeds`).

A method subclasses :class:`Method` (or :class:`cssl.methods.contrast.ContrastiveMethod` when it contrasts
with negatives) and implements :meth:`Method.ssl_step`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from cssl.core.errors import check, check_int, check_positive
from cssl.eval.monitor import KnnMonitor
from cssl.models.optim import OptimSettings, build_optimizer, configure_schedule, global_batch, param_groups


@dataclass(frozen=True)
class ViewNeeds:
    """The views a method's training step takes, in batch order: ``main`` views at the data's image size,
    the data's extra multi-crop views (``data.multicrop``; a method uses them or takes ``views[:main]``),
    then ``support`` views that only serve detection (no gradient) and come last."""

    main: int = 2
    support: int = 0


class Method(pl.LightningModule):
    """Base of all methods.

    Args:
        backbone: image encoder with ``num_features``.
        num_classes: classes of the labelled data (online probe and kNN).
        batch_size: images per step on one device (for learning-rate scaling).
        optim: optimiser and schedule.
        probe_lr: learning rate of the online linear probe (trained on detached features, no weight decay).
        per_view_forward: forward the views of a step one at a time (BN statistics per view, as some official
            code does) instead of concatenated in one pass (:meth:`encode_views`).
        knn_k, knn_t: neighbours and temperature of the online kNN classifier.
        diagnostics_every_n_steps: log step diagnostics every this many steps and validation diagnostics
            (``val/uniformity``, ...) at each validation; 0 turns them off.
        false_negative_k: k of ``val/false_negative_rate``.
    """

    #: Whether the EMA step of the momentum pairs opens each step, before the target's forward, instead of
    #: following the optimiser step; each method follows its official code (see :meth:`step_momentum_pairs`).
    ema_before_forward: bool = False

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        batch_size: int,
        optim: OptimSettings,
        probe_lr: float = 0.1,
        per_view_forward: bool = False,
        knn_k: int = 20,
        knn_t: float = 0.07,
        diagnostics_every_n_steps: int = 0,
        false_negative_k: int = 10,
        **unknown: Any,
    ) -> None:
        super().__init__()
        check(
            not unknown, f"method.{', method.'.join(sorted(unknown))}: not applicable to {type(self).__name__.lower()}"
        )
        check(
            num_classes == 0 or num_classes >= 2,
            f"the labelled data must have at least 2 classes (0: unlabelled), got {num_classes}",
        )
        check_int("method.knn_k", knn_k, 1)
        check_positive("method.knn_t", knn_t)
        check_positive("method.probe_lr", probe_lr)
        check(
            isinstance(per_view_forward, bool),
            f"method.per_view_forward must be true or false, got {per_view_forward!r}",
        )
        check_int("diagnostics.every_n_steps", diagnostics_every_n_steps, 0)
        check_int("diagnostics.false_negative_k", false_negative_k, 1)
        self.backbone = backbone
        self.num_features: int = backbone.num_features
        self.num_classes, self.batch_size, self.optim = num_classes, batch_size, optim
        self.probe_lr, self.per_view_forward = probe_lr, per_view_forward
        self.diagnostics_every_n_steps, self.false_negative_k = diagnostics_every_n_steps, false_negative_k
        # num_classes 0 (unlabelled data): no online probe and no kNN (the probe and metrics keep a shape)
        classes = max(num_classes, 2)
        self.probe = nn.Linear(self.num_features, classes)
        self.online_probe = num_classes > 0  # off also when only held-out images are labelled
        # validate_args=False: the argument checks read tensor values on the host (a device sync every step)
        self.train_acc = MulticlassAccuracy(classes, average="micro", ignore_index=-1, validate_args=False)
        self.val_acc = MulticlassAccuracy(classes, average="micro", ignore_index=-1)
        self.monitor = KnnMonitor(num_classes, k=knn_k, temperature=knn_t, false_negative_k=false_negative_k)
        self.last_val_embedding: tuple[Tensor, Tensor] | None = None
        self.last_validated_step = -1
        self.meta: dict[str, Any] = {}  # plain data saved as checkpoint["cssl"] (how to rebuild the backbone)
        self.channels_last = False
        self.needs = ViewNeeds()
        self._optimizer_stepped, self._batch_finished, self._ema_step = False, False, None

    @property
    def online_probe(self) -> bool:
        """Whether the online probe learns and is scored; off, its weights take no gradient (under DDP an
        unused parameter would be an error)."""
        return self._online_probe

    @online_probe.setter
    def online_probe(self, on: bool) -> None:
        self._online_probe = bool(on)
        self.probe.requires_grad_(self._online_probe)

    # -- what a method declares and implements --------------------------------------------------------
    @classmethod
    def view_needs(cls, **options: Any) -> ViewNeeds:
        """The views a training step of this method takes, given its ``method.*`` options."""
        return ViewNeeds()

    def ssl_step(
        self, views: list[Tensor], support: list[Tensor] | None = None, labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Loss of one step from the main (and multi-crop) ``views``, this step's ``support`` views and its
        ``labels`` (-1: unlabelled; diagnostics only). Returns the loss (scalar), backbone features of the first
        view (B, F) for the online probe, and metrics to log (name -> scalar)."""
        raise NotImplementedError

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, target) pairs whose target follows its online module by an EMA (``update(online, m)``)."""
        return []

    def after_batch(self, stepped: bool = True) -> None:
        """Work after each training batch; ``stepped``: the batch completed an optimiser step (False for the
        earlier micro-batches under gradient accumulation). Default: the EMA step after the optimiser step."""
        if stepped and not self.ema_before_forward:
            self.step_momentum_pairs(self.global_step - 1)  # optimiser step k was taken: global_step is k + 1

    # -- shared machinery ----------------------------------------------------------------------------
    def total_steps(self) -> int:
        """Optimiser steps of the whole run (0: unknown, or no trainer)."""
        total = self._trainer.estimated_stepping_batches if self._trainer is not None else 0
        return int(total) if isinstance(total, int | float) and 0 < total < float("inf") else 0

    def training_progress(self) -> float:
        """p = global_step / total optimiser steps, in [0, 1] (0 without a trainer)."""
        total = self.total_steps()
        return min(1.0, max(0.0, self.global_step / total)) if total else 0.0

    def epochs(self) -> tuple[int, int]:
        """(current epoch, epochs of the run); a run bounded by steps counts the epochs those steps take."""
        if self._trainer is None:
            return self.current_epoch, 1
        trainer = self.trainer
        epochs = trainer.max_epochs
        if trainer.max_steps not in (-1, None) or not epochs or epochs < 0:
            per_epoch = max(1, math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches))
            epochs = math.ceil(trainer.estimated_stepping_batches / per_epoch)
        return self.current_epoch, max(1, int(epochs))

    def step_momentum_pairs(self, step: int | None = None) -> float:
        """One EMA step of every momentum pair with the momentum of optimiser step ``step`` (default: this
        one); under a trainer once per optimiser step (accumulated micro-batches skip it). Returns m."""
        step = self.global_step if step is None else step
        m = 0.0
        for online, target in self.momentum_pairs():
            m = target.momentum_at(step, self.total_steps())
            if self._trainer is None or self._ema_step != step:
                target.update(online, m)
        self._ema_step = step
        return m

    def diagnose(self) -> bool:
        """Whether this training step logs diagnostics (a Python check: no device synchronisation)."""
        every = self.diagnostics_every_n_steps
        # Lightning writes logged values when (step + 1) is a multiple of log_every_n_steps; align with it
        return self.training and every > 0 and (self.global_step + 1) % every == 0

    def encode_views(self, views: list[Tensor], head: nn.Module) -> tuple[Tensor, Tensor]:
        """Backbone features (V*B, F) and ``head`` outputs (V*B, D) of the views, stacked in view order: one
        pass over the concatenated views, or one per view with ``per_view_forward``."""
        if not self.per_view_forward:
            feats = self.backbone(torch.cat(views))  # (V*B, F)
            return feats, head(feats)
        feats = [self.backbone(v) for v in views]  # V x (B, F)
        return torch.cat(feats), torch.cat([head(f) for f in feats])  # (V*B, F), (V*B, D)

    def ssl_modules(self) -> list[nn.Module]:
        """Modules trained by the main optimiser (not the probe)."""
        return [m for name, m in self.named_children() if name not in ("probe", "train_acc", "val_acc")]

    # -- speed: channels_last is set by cssl.models.speed.use_channels_last ------------------------------
    def _images(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cssl"] = self.meta

    # -- training -------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def training_step(self, batch: tuple[list[Tensor], Tensor], batch_idx: int) -> Tensor:
        views, y = batch
        views = [self._images(v) for v in views]
        main = len(views) - self.needs.support
        loss, feats, logs = self.ssl_step(views[:main], views[main:], y)
        self.log("train/loss", loss, prog_bar=True)
        for name, value in logs.items():
            self.log(name, value)
        if not self.online_probe:
            return loss
        logits = self.probe(feats.detach())
        # mean over labelled rows (label -1 = unlabelled), without a host sync on the label count
        probe_loss = F.cross_entropy(logits, y, ignore_index=-1, reduction="sum") / (y >= 0).sum().clamp(min=1)
        self.train_acc.update(logits, y)  # no per-step value (forward would compute one): epoch-level metric
        self.log("train/probe_loss", probe_loss)
        self.log("train/online_top1", self.train_acc, on_step=False, on_epoch=True)
        return loss + probe_loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self._optimizer_stepped = True

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._batch_finished = False

    def finish_batch(self) -> None:
        """The method's work after a training batch (:meth:`after_batch`), once per batch: the FinishStep
        callback runs it before any checkpoint of the step is written, and this module's hook then skips it."""
        if not self._batch_finished:
            self._batch_finished = True
            stepped, self._optimizer_stepped = self._optimizer_stepped, False
            self.after_batch(stepped)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.finish_batch()

    # -- validation: online probe on the held-out split, kNN against the labelled train split ----------
    def on_validation_epoch_start(self) -> None:
        self.monitor.reset()

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch[0], batch[1]
        dataloader_idx = 1 if self.num_classes == 0 else dataloader_idx  # unlabelled: held-out images only
        feats = self.backbone(self._images(x))
        if len(batch) == 3:  # two augmented views of held-out images, for val/alignment
            self.monitor.add_pair(*(self.backbone(self._images(v)) for v in batch[2][:2]))
        if dataloader_idx == 1 and self.online_probe:
            self.val_acc(self.probe(feats), y)
            self.log("val/online_top1", self.val_acc, on_epoch=True, add_dataloader_idx=False)
        self.monitor.add(dataloader_idx, feats, y)

    def on_validation_epoch_end(self) -> None:
        self.last_validated_step = self.global_step
        logs = self.monitor.compute(self._gather_rows, diagnostics=self.diagnostics_every_n_steps > 0)
        self.last_val_embedding = self.monitor.embedding
        for name, value in logs.items():
            self.log(name, value, add_dataloader_idx=False)

    def _gather_rows(self, x: Tensor) -> Tensor:
        return x if self.trainer.world_size == 1 else self.all_gather(x).flatten(0, 1)  # (P*N, ...)

    # -- optimiser and schedule -------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        lr = self.optim.peak_lr(global_batch(self.trainer, self.batch_size))
        groups = param_groups(self.ssl_modules(), self.optim.weight_decay, self.optim.exclude_bias_norm)
        groups.append({"params": list(self.probe.parameters()), "weight_decay": 0.0, "lr": self.probe_lr})
        return configure_schedule(self.trainer, build_optimizer(groups, self.optim, lr), self.optim)
