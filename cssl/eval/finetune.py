"""Fine-tuning: the whole backbone trains with the classifier (BN in train mode while training), at its own
learning rate and, optionally, a rate that shrinks layer by layer towards the input (layer-wise decay)."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from cssl.core.errors import check, is_number
from cssl.eval.probe import Classifier
from cssl.models.optim import param_groups


def layer_levels(backbone: nn.Module) -> list[list[nn.Module]]:
    """The backbone's parameters in levels from the input (level 0) to the output, as modules.

    A torchvision ResNet has five: the stem (``conv1``, ``bn1``) and ``layer1`` to ``layer4``. Any other
    backbone (timm models) is split by module order: each top-level child is a level, except containers of
    blocks (``nn.Sequential``/``nn.ModuleList``, e.g. a ViT's ``blocks`` or a ConvNeXt's ``stages``), whose
    children are one level each; parameters held directly by the backbone (a ViT's ``cls_token`` and
    ``pos_embed``) join level 0.
    """
    if all(hasattr(backbone, f"layer{i}") for i in range(1, 5)):
        layers = [getattr(backbone, f"layer{i}") for i in range(1, 5)]
        stem = [m for m in backbone.children() if all(m is not layer for layer in layers)]
        return [stem, *[[layer] for layer in layers]]
    levels: list[list[nn.Module]] = [[_Direct(backbone)]]
    for child in backbone.children():
        if not any(True for _ in child.parameters()):
            continue
        if isinstance(child, nn.Sequential | nn.ModuleList):
            levels += [[block] for block in child.children() if any(True for _ in block.parameters())]
        else:
            levels.append([child])
    return levels if any(True for _ in levels[0][0].parameters()) else levels[1:]


class _Direct(nn.Module):
    """The parameters a module holds itself (not those of its children), as a module for :func:`param_groups`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        for name, p in module.named_parameters(recurse=False):
            self.register_parameter(name, p)


def layer_rates(levels: int, backbone_lr: float, layer_decay: float) -> list[float]:
    """Peak rate of each level (input first): the last level gets ``backbone_lr``, each one below it
    ``layer_decay`` times the rate above.

    Example:
        >>> layer_rates(3, 0.1, 0.5)
        [0.025, 0.05, 0.1]
    """
    return [backbone_lr * layer_decay ** (levels - 1 - i) for i in range(levels)]


def check_finetune_options(backbone_lr: Any, backbone_lr_ratio: Any, layer_decay: Any) -> None:
    """One-line errors for ``finetune.*`` (called before any work)."""
    check(
        backbone_lr is None or (is_number(backbone_lr) and backbone_lr >= 0),
        f"finetune.backbone_lr must be null or >= 0, got {backbone_lr!r}",
    )
    check(
        is_number(backbone_lr_ratio) and backbone_lr_ratio >= 0,
        f"finetune.backbone_lr_ratio must be >= 0, got {backbone_lr_ratio!r}",
    )
    check(
        is_number(layer_decay) and 0 < layer_decay <= 1, f"finetune.layer_decay must be in (0, 1], got {layer_decay!r}"
    )


class FineTuner(Classifier):
    """The backbone and a linear classifier trained together.

    Args:
        backbone_lr: base rate of the backbone (scaled with the batch as ``optim.lr`` is); None:
            ``backbone_lr_ratio * optim.lr``.
        backbone_lr_ratio: see ``backbone_lr``.
        layer_decay: the backbone's last level runs at the backbone rate, each level below at ``layer_decay``
            times the rate of the one above (:func:`layer_levels`); 1: one rate for the whole backbone.
        **kwargs: those of :class:`~cssl.eval.probe.Classifier`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        backbone_lr: float | None = None,
        backbone_lr_ratio: float = 1.0,
        layer_decay: float = 1.0,
        **kwargs: Any,
    ) -> None:
        check_finetune_options(backbone_lr, backbone_lr_ratio, layer_decay)
        super().__init__(backbone.requires_grad_(True).train(), **kwargs)
        self.backbone_lr, self.backbone_lr_ratio, self.layer_decay = backbone_lr, backbone_lr_ratio, layer_decay

    def optimizer_groups(self, lr: float) -> list[dict]:
        base = self.backbone_lr if self.backbone_lr is not None else self.backbone_lr_ratio * self.optim.lr
        scaled = lr * base / self.optim.lr  # the batch scaling of the classifier's rate
        levels = layer_levels(self.backbone)
        groups = super().optimizer_groups(lr)
        for rate, modules in zip(layer_rates(len(levels), scaled, self.layer_decay), levels, strict=True):
            weights, *no_decay = param_groups(modules, self.optim.weight_decay, self.optim.exclude_bias_norm)
            # LARS (timm) adapts the weights' rate also without weight decay, as SimCLR's LARS does (BN and
            # biases are left out of the adaptation there, and here with exclude_bias_norm)
            groups += [{**weights, "lr": rate, "always_adapt": True}, *({**g, "lr": rate} for g in no_decay)]
        return [g for g in groups if g["params"]]
