"""Optimisers (SGD, LARS, AdamW) with BN and bias excluded from weight decay, and warm-up + cosine (or step
decay at milestones), stepped per optimiser step or per epoch."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from torch.utils.data import DistributedSampler

from cssl.core.errors import ConfigError, check, check_positive, is_number

if TYPE_CHECKING:
    import pytorch_lightning as pl

OPTIMIZERS = ("sgd", "lars", "adamw", "adam")
SCHEDULES = ("cosine", "steps")
INTERVALS = ("step", "epoch")


@dataclass(frozen=True)
class OptimSettings:
    """Optimiser and schedule of a run.

    Attributes:
        name: ``sgd``, ``lars``, ``adamw`` or ``adam``.
        lr: base learning rate; with ``scale_lr`` the rate used is lr * global_batch / 256.
        weight_decay: applied to weights only when ``exclude_bias_norm`` (BN/LN parameters and biases get 0;
            LARS also skips its trust ratio for them).
        momentum: SGD/LARS momentum.
        betas: Adam betas.
        warmup_epochs: linear warm-up length (fractional epochs allowed), then cosine to ``min_lr_ratio * lr``.
        scale_lr: scale the rate with the global batch size: ``true`` (or ``linear``) lr * batch / 256, ``sqrt``
            lr * sqrt(batch) (SimCLR's ``learning_rate_scaling=sqrt``, model_util.py:66-67), ``false`` none.
        exclude_bias_norm: see ``weight_decay``.
        min_lr_ratio: final rate of the cosine as a fraction of the peak rate.
        schedule: ``cosine`` (after the warm-up, half-cosine to ``min_lr_ratio``) or ``steps`` (the rate times
            ``gamma`` at each of ``milestones``, as MoCo's main_lincls.py adjust_learning_rate).
        schedule_interval: ``step`` (the rate changes every optimiser step) or ``epoch`` (it changes at the start
            of each epoch, as the ``adjust_learning_rate`` of MoCo's and AdCo's scripts: epoch e of E runs at
            the cosine's value at e / E).
        milestones: epochs at which ``steps`` multiplies the rate by ``gamma`` (increasing, >= 0).
        gamma: factor of each milestone, in (0, 1].
        lars_eta: LARS trust coefficient (eta): the adapted rate of a weight is eta * |w| / (|g| + wd |w|).
        lars_clip: LARC clipping: the adapted rate never exceeds the scheduled rate (min(eta-ratio / lr, 1)).
    """

    name: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 0.0
    scale_lr: bool | str = True
    exclude_bias_norm: bool = True
    min_lr_ratio: float = 0.0
    schedule: str = "cosine"
    schedule_interval: str = "step"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    lars_eta: float = 0.001
    lars_clip: bool = False

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optimizer.name must be one of {', '.join(OPTIMIZERS)}, got {self.name!r}")
        check_positive("optimizer.lr", self.lr)
        check(self.weight_decay >= 0, f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")
        check(self.warmup_epochs >= 0, f"optimizer.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        check(0 <= self.min_lr_ratio <= 1, f"optimizer.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        check(
            self.schedule in SCHEDULES,
            f"optimizer.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}",
        )
        check(
            self.schedule_interval in INTERVALS,
            f"optimizer.schedule_interval must be one of {', '.join(INTERVALS)}, got {self.schedule_interval!r}",
        )
        milestones = (
            list(self.milestones)
            if isinstance(self.milestones, Sequence) and not isinstance(self.milestones, str)
            else None
        )
        check(
            milestones is not None
            and all(is_number(m) and m >= 0 for m in milestones)
            and all(a < b for a, b in zip(milestones, milestones[1:], strict=False)),
            f"optimizer.milestones must be a list of increasing epochs >= 0, got {self.milestones!r}",
        )
        object.__setattr__(self, "milestones", tuple(float(m) for m in milestones))
        check(is_number(self.gamma) and 0 < self.gamma <= 1, f"optimizer.gamma must be in (0, 1], got {self.gamma!r}")
        check(
            self.scale_lr in (True, False, "linear", "sqrt"),
            f"optimizer.scale_lr must be true, false, linear or sqrt, got {self.scale_lr!r}",
        )
        check_positive("optimizer.lars_eta", self.lars_eta)
        check(isinstance(self.lars_clip, bool), f"optimizer.lars_clip must be true or false, got {self.lars_clip!r}")

    def peak_lr(self, global_batch: int) -> float:
        if self.scale_lr == "sqrt":
            return self.lr * math.sqrt(global_batch)
        return self.lr * global_batch / 256 if self.scale_lr else self.lr


def param_groups(modules: Iterable[nn.Module], weight_decay: float, exclude_bias_norm: bool) -> list[dict]:
    """Split parameters into a decayed group and a no-decay group (biases and normalisation layers)."""
    decay, no_decay = [], []
    for module in modules:
        for sub in module.modules():
            is_norm = isinstance(sub, nn.modules.batchnorm._NormBase | nn.LayerNorm | nn.GroupNorm)
            for name, p in sub.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                (no_decay if exclude_bias_norm and (is_norm or name == "bias" or p.ndim <= 1) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(groups: list[dict], settings: OptimSettings, lr: float) -> torch.optim.Optimizer:
    """The optimiser over ``groups``; a group may carry its own ``lr``."""
    if settings.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=settings.momentum)
    if settings.name == "lars":
        from timm.optim import Lars

        # timm's LARS adapts only groups with weight decay, so the no-decay group is plain SGD.
        return Lars(
            groups, lr=lr, momentum=settings.momentum, trust_coeff=settings.lars_eta, trust_clip=settings.lars_clip
        )
    cls = torch.optim.AdamW if settings.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=lr, betas=tuple(settings.betas))


def warmup_cosine(step: int, warmup_steps: float, total_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak rate at ``step``: linear warm-up from ~0, then half-cosine to ``min_ratio``.

    Example:
        >>> warmup_cosine(0, 10, 100), warmup_cosine(10, 10, 100), warmup_cosine(100, 10, 100)
        (0.1, 1.0, 0.0)
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1.0, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_factor(
    t: int,
    warmup: float,
    total: float,
    *,
    schedule: str = "cosine",
    milestones: tuple[float, ...] = (),
    gamma: float = 0.1,
    min_ratio: float = 0.0,
) -> float:
    """Multiplier of the peak rate at ``t`` (steps or epochs; ``warmup``, ``total`` and ``milestones`` in the
    same unit): the warm-up of :func:`warmup_cosine`, then its cosine, or ``gamma`` to the number of
    milestones reached (``steps``).

    Example:
        >>> [lr_factor(e, 0, 100, schedule="steps", milestones=(60, 80)) for e in (0, 59, 60, 80)]
        [1.0, 1.0, 0.1, 0.010000000000000002]
    """
    if schedule == "cosine" or t < warmup:
        return warmup_cosine(t, warmup, int(total), min_ratio)
    return gamma ** sum(t >= m for m in milestones)


def configure_schedule(trainer: pl.Trainer, optimizer: torch.optim.Optimizer, settings: OptimSettings) -> dict:
    """Lightning's optimiser dict with the warm-up + cosine (or step) schedule over the whole run, stepped
    per optimiser step or per epoch (``settings.schedule_interval``)."""
    total = max(1, int(trainer.estimated_stepping_batches))
    if trainer.max_steps in (-1, None) and trainer.max_epochs and trainer.max_epochs > 0:
        per_epoch = total / trainer.max_epochs
    else:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None:
            loader = datamodule.train_dataloader()  # a DistributedSampler already holds one rank's share
            batches = len(loader) / (1 if isinstance(loader.sampler, DistributedSampler) else trainer.world_size)
        else:
            batches = total
        per_epoch = max(1.0, math.floor(batches) / trainer.accumulate_grad_batches)
    options = {"schedule": settings.schedule, "gamma": settings.gamma, "min_ratio": settings.min_lr_ratio}
    if settings.schedule_interval == "epoch":
        epochs = trainer.max_epochs if trainer.max_steps in (-1, None) and trainer.max_epochs else None
        epochs = int(epochs) if epochs and epochs > 0 else max(1, math.ceil(total / per_epoch))
        scale, length = 1.0, epochs
    else:
        scale, length = per_epoch, total
    warmup = settings.warmup_epochs * scale
    milestones = tuple(m * scale for m in settings.milestones)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: lr_factor(t, warmup, length, milestones=milestones, **options)
    )
    interval = settings.schedule_interval
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}


def global_batch(trainer: pl.Trainer, batch_size: int) -> int:
    """Images per optimiser step over all ranks and accumulated batches."""
    return batch_size * trainer.world_size * trainer.accumulate_grad_batches
