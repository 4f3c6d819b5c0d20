"""The one small base class of every method: encoder, projector, online probe and kNN, optimiser,
schedule and logging. It knows nothing about datasets: batches arrive as (views, labels), views already
augmented on the device by the data module.

A method subclasses :class:`ContrastiveMethod` and implements :meth:`contrastive_step`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from cssl.contrastive.diagnostics import alignment, false_negative_rate, log_histograms, step_diagnostics, uniformity
from cssl.contrastive.estimators import annealed_beta, check_estimator, info_nce
from cssl.contrastive.negatives import ease
from cssl.core.errors import check, check_positive
from cssl.eval.knn import knn_predict
from cssl.methods.selection import NegativeSelection
from cssl.models.optim import OptimSettings, build_optimizer, configure_schedule, global_batch, param_groups


class ContrastiveMethod(NegativeSelection, pl.LightningModule):
    """Base of all methods.

    Args:
        backbone: image encoder with ``num_features``.
        num_classes: classes of the labelled data (online probe and kNN).
        batch_size: images per step on one device (for learning-rate scaling).
        optim: optimiser and schedule.
        probe_lr: learning rate of the online linear probe (trained on detached features, no weight decay).
        temperature, estimator, tau_plus, beta: the loss (:func:`cssl.contrastive.info_nce`); every method
            takes every estimator, whatever its pool of negatives.
        beta_anneal: lower HCL's beta to 0 in 9 steps over the epochs, as the official code
            (:func:`annealed_beta`).
        per_view_forward: forward the views of a step one at a time (BN statistics per view, as the official
            DCL/HCL code and AdCo's symmetric loss do) instead of concatenated in one pass (:meth:`encode_views`).
        knn_k, knn_t: neighbours and temperature of the online kNN classifier.
        diagnostics_every_n_steps: log negative-sampling diagnostics (``neg/...``) every this many steps
            and validation diagnostics (``val/uniformity``, ...) at each validation; 0 turns them off.
        diagnostics_top_k: k of the hardness measure; false_negative_k: k of the false-negative rate.
        fnc, fnc_top_k, fnc_threshold, fnc_support_views, fnc_aggregation, ring_outer, ring_inner: the
            negative selection (:class:`cssl.contrastive.negatives.NegativeSelector`), with every pool.
        curriculum: ``none``, ``linear`` or ``sqrt``: h(p) of training progress drives the hardness knobs
            that are on from easy to hard (HCL's beta from 0, the ring's outer fraction from 1, MoChi's
            mixes from 0), reaching them at progress ``curriculum_end`` (:func:`cssl.contrastive.negatives.hardness`).
    """

    #: Whether the method contrasts with negatives (False: no pool, no estimator, no ``neg/...``; BYOL).
    uses_negatives: bool = True

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        batch_size: int,
        optim: OptimSettings,
        temperature: float = 0.5,
        estimator: str = "infonce",
        tau_plus: float = 0.0,
        beta: float = 0.0,
        beta_anneal: bool = False,
        per_view_forward: bool = False,
        probe_lr: float = 0.1,
        knn_k: int = 20,
        knn_t: float = 0.07,
        diagnostics_every_n_steps: int = 0,
        diagnostics_top_k: int = 5,
        false_negative_k: int = 10,
        fnc: str = "none",
        fnc_top_k: int | None = 10,
        fnc_threshold: float | None = 0.7,
        fnc_support_views: int = 0,
        fnc_aggregation: str = "max",
        ring_outer: float | None = None,
        ring_inner: float = 0.1,
        curriculum: str = "none",
        curriculum_end: float = 0.5,
    ) -> None:
        super().__init__()
        check_estimator(estimator, temperature, tau_plus, beta)
        self.init_selection(
            fnc=fnc,
            fnc_top_k=fnc_top_k,
            fnc_threshold=fnc_threshold,
            fnc_support_views=fnc_support_views,
            fnc_aggregation=fnc_aggregation,
            ring_outer=ring_outer,
            ring_inner=ring_inner,
            curriculum=curriculum,
            curriculum_end=curriculum_end,
        )
        check(num_classes >= 2, f"the labelled data must have at least 2 classes, got {num_classes}")
        check(isinstance(knn_k, int) and knn_k >= 1, f"method.knn_k must be an integer >= 1, got {knn_k!r}")
        check_positive("method.knn_t", knn_t)
        check_positive("method.probe_lr", probe_lr)
        self.backbone = backbone
        self.num_features: int = backbone.num_features
        self.num_classes, self.batch_size, self.optim = num_classes, batch_size, optim
        self.temperature, self.estimator, self.tau_plus, self.beta = temperature, estimator, tau_plus, beta
        self.beta_anneal = bool(beta_anneal)
        check(
            isinstance(per_view_forward, bool),
            f"method.per_view_forward must be true or false, got {per_view_forward!r}",
        )
        self.per_view_forward = per_view_forward
        self.check_curriculum_knobs()
        self.probe_lr, self.knn_k, self.knn_t = probe_lr, knn_k, knn_t
        for name, value in (
            ("every_n_steps", diagnostics_every_n_steps),
            ("top_k", diagnostics_top_k),
            ("false_negative_k", false_negative_k),
        ):
            check(
                isinstance(value, int) and value >= (0 if name == "every_n_steps" else 1),
                f"diagnostics.{name} must be a non-negative integer, got {value!r}",
            )
        self.diagnostics_every_n_steps, self.diagnostics_top_k = diagnostics_every_n_steps, diagnostics_top_k
        self.false_negative_k = false_negative_k
        self.last_val_embedding: tuple[Tensor, Tensor] | None = None
        self.probe = nn.Linear(self.num_features, num_classes)
        # validate_args=False: the argument checks read tensor values on the host (a device sync every step)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=-1, validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=-1)
        self._val_feats: dict[int, list[Tensor]] = {0: [], 1: [], 2: []}  # 2: pairs of val views (alignment)
        self._val_labels: dict[int, list[Tensor]] = {0: [], 1: [], 2: []}
        self.last_validated_step = -1
        self.meta: dict[str, Any] = {}  # plain data saved as checkpoint["cssl"] (how to rebuild the backbone)
        self.channels_last = False

    # -- speed options (top-level config keys channels_last and compile) ------------------------------
    def use_channels_last(self) -> None:
        """Weights (here) and input images (in each step) in the channels-last memory format."""
        self.channels_last = True
        self.to(memory_format=torch.channels_last)

    def compile_backbone(self) -> bool:
        """``torch.compile`` the backbone in place (state-dict keys unchanged); returns whether it did.

        Where compilation is unsupported (no C++ compiler or Triton, an unsupported platform) it warns and
        leaves the backbone eager. A copy made before this call (a momentum key encoder) stays eager.
        """
        reason = compile_unsupported()
        if reason is not None:
            warnings.warn(f"compile=true skipped: torch.compile is unsupported here ({reason})", stacklevel=2)
            return False
        self.backbone.compile()
        return True

    def _images(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    # -- what a method implements -------------------------------------------------------------------
    def contrastive_step(self, views: list[Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Loss of one step.

        Returns:
            loss (scalar), backbone features of the first view (B, F) for the online probe, and extra
            metrics to log (name -> scalar tensor).
        """
        raise NotImplementedError

    def encode_views(self, views: list[Tensor], head: nn.Module) -> tuple[Tensor, Tensor]:
        """Backbone features and ``head`` outputs of the views, stacked along the batch in view order.

        One pass over the concatenated views (BN statistics over all of them), or with ``per_view_forward``
        one pass per view (BN statistics of each view alone; DCL main.py:31-32, HCL image/main.py:63-64).

        Returns:
            features (V*B, F) and head outputs (V*B, D).
        """
        if not self.per_view_forward:
            feats = self.backbone(torch.cat(views))  # (V*B, F)
            return feats, head(feats)
        feats = [self.backbone(v) for v in views]  # V x (B, F)
        return torch.cat(feats), torch.cat([head(f) for f in feats])  # (V*B, F), (V*B, D)

    def after_optimizer_step(self) -> None:
        """Work that follows the network update (e.g. enqueueing keys); default: nothing."""

    def ssl_modules(self) -> list[nn.Module]:
        """Modules trained by the main optimiser (not the probe)."""
        return [m for name, m in self.named_children() if name not in ("probe", "train_acc", "val_acc")]

    def contrastive_loss(
        self, pos: Tensor, neg: Tensor, neg_mask: Tensor | None = None, extra_pos: Tensor | None = None
    ) -> Tensor:
        """The method's estimator over (pos (B,), neg (B, M)) cosine similarities, mean over anchors
        (``extra_pos``: false-negative attraction's extra positives)."""
        return info_nce(
            pos,
            neg,
            self.temperature,
            estimator=self.estimator,
            tau_plus=self.tau_plus,
            beta=self.current_beta(),
            neg_mask=neg_mask,
            extra_pos=extra_pos,
        )

    def current_beta(self) -> float:
        """HCL's beta in this epoch or step: raised from 0 by the hardness curriculum, or lowered by
        ``beta_anneal`` (the official per-epoch schedule of :func:`annealed_beta`); a Python number."""
        if self.curriculum != "none":  # the hardness curriculum raises beta from 0 (NEGATIVES.md 4.2)
            return ease(0.0, self.beta, self.current_hardness())
        if not self.beta_anneal or self._trainer is None:
            return self.beta
        trainer = self.trainer
        epochs = trainer.max_epochs
        if trainer.max_steps not in (-1, None) or not epochs or epochs < 0:  # a run bounded by steps
            per_epoch = max(1, math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches))
            epochs = math.ceil(trainer.estimated_stepping_batches / per_epoch)
        return annealed_beta(self.beta, self.current_epoch, max(1, int(epochs)))

    def diagnose(self) -> bool:
        """Whether this training step logs diagnostics (a Python check: no device synchronisation)."""
        every = self.diagnostics_every_n_steps
        # Lightning writes logged values when (step + 1) is a multiple of log_every_n_steps; align with it
        return self.training and every > 0 and (self.global_step + 1) % every == 0

    def negative_diagnostics(self, pos: Tensor, neg: Tensor, neg_mask: Tensor | None = None) -> dict[str, Tensor]:
        """``neg/...`` metrics of one step's (pos (B,), neg (B, M)) cosine similarities, and their histograms."""
        pos, neg = pos.detach(), neg.detach()
        logs = step_diagnostics(
            pos,
            neg,
            neg_mask,
            temperature=self.temperature,
            estimator=self.estimator,
            tau_plus=self.tau_plus,
            beta=self.current_beta(),
            top_k=self.diagnostics_top_k,
        )
        log_histograms(self.logger, self.global_step, pos, neg if neg_mask is None else neg[neg_mask])
        return logs

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cssl"] = self.meta

    # -- training -------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def training_step(self, batch: tuple[list[Tensor], Tensor], batch_idx: int) -> Tensor:
        views, y = batch
        support = self.negatives.fnc_support_views  # FNC's support views come last (build_views)
        views, support_views = (views[:-support], views[-support:]) if support else (views, [])
        self._batch_labels, self._selection_logs = y, {}
        self._support_views = [self._images(v) for v in support_views]
        loss, feats, extra = self.contrastive_step([self._images(v) for v in views])
        logits = self.probe(feats.detach())
        # mean over labelled rows (label -1 = unlabelled), without a host sync on the label count
        labelled = (y >= 0).sum().clamp(min=1)
        probe_loss = F.cross_entropy(logits, y, ignore_index=-1, reduction="sum") / labelled
        self.train_acc.update(logits, y)  # no per-step value (forward would compute one): epoch-level metric
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/probe_loss", probe_loss)
        self.log("train/online_top1", self.train_acc, on_step=False, on_epoch=True)
        if self.beta_anneal:
            self.log("train/beta", float(self.current_beta()))
        for name, value in extra.items():
            self.log(name, value)
        for name, value in self._selection_logs.items():
            self.log(name, value)
        if self.curriculum != "none":
            self.log("curriculum/h", self.current_hardness())
        return loss + probe_loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.after_optimizer_step()

    # -- validation: online probe on the held-out split, kNN against the labelled train split ----------
    def on_validation_epoch_start(self) -> None:
        for store in (self._val_feats, self._val_labels):
            for values in store.values():
                values.clear()

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch[0], batch[1]
        feats = self.backbone(self._images(x))
        if len(batch) == 3:  # two augmented views of held-out images, for val/alignment
            v1, v2 = batch[2][:2]
            self._val_feats[2].append(torch.stack([self.backbone(self._images(v1)), self.backbone(self._images(v2))]))
        if dataloader_idx == 1:
            self.val_acc(self.probe(feats), y)
            self.log("val/online_top1", self.val_acc, on_epoch=True, add_dataloader_idx=False)
        self._val_feats[dataloader_idx].append(F.normalize(feats.float(), dim=1))
        self._val_labels[dataloader_idx].append(y)

    def on_validation_epoch_end(self) -> None:
        self.last_validated_step = self.global_step
        if not self._val_feats[0] or not self._val_feats[1]:
            return
        bank, bank_y, query, query_y = (
            self._gather_rows(torch.cat(store[i])) for i in (0, 1) for store in (self._val_feats, self._val_labels)
        )
        keep = bank_y >= 0
        scores = knn_predict(query, bank[keep], bank_y[keep], self.num_classes, k=self.knn_k, temperature=self.knn_t)
        top1 = (scores.argmax(1) == query_y).float().mean()
        self.log("val/knn_top1", top1, add_dataloader_idx=False)
        self.last_val_embedding = (query.detach(), query_y.detach())  # to the host only if a map is drawn
        if self.diagnostics_every_n_steps > 0:
            self.log("val/uniformity", uniformity(query), add_dataloader_idx=False)
            self.log(
                "val/false_negative_rate",
                false_negative_rate(query, query_y, self.false_negative_k),
                add_dataloader_idx=False,
            )
            if self._val_feats[2]:
                pairs = self._gather_rows(torch.cat(self._val_feats[2], dim=1).transpose(0, 1)).transpose(0, 1)
                self.log("val/alignment", alignment(pairs[0], pairs[1]), add_dataloader_idx=False)

    def _gather_rows(self, x: Tensor) -> Tensor:
        if self.trainer.world_size == 1:
            return x
        return self.all_gather(x).flatten(0, 1)  # (P*N, ...)

    # -- optimiser and schedule -------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        lr = self.optim.peak_lr(global_batch(self.trainer, self.batch_size))
        groups = param_groups(self.ssl_modules(), self.optim.weight_decay, self.optim.exclude_bias_norm)
        groups.append({"params": list(self.probe.parameters()), "weight_decay": 0.0, "lr": self.probe_lr})
        return configure_schedule(self.trainer, build_optimizer(groups, self.optim, lr), self.optim)


def compile_unsupported() -> str | None:
    """None if ``torch.compile`` compiles and runs a small function here, else the reason (one line)."""
    try:
        fn = torch.compile(lambda x: torch.relu(x) * 2 + 1, dynamic=False)
        fn(torch.ones(4))
    except Exception as err:  # the backend's failure modes vary (missing compiler, Triton, platform)
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:200]
    return None
