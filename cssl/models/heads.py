"""One MLP builder for projectors and predictors."""

from __future__ import annotations

import torch.nn as nn


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    *,
    num_layers: int = 2,
    batch_norm: bool = True,
    last_batch_norm: bool = False,
    bias: bool = True,
) -> nn.Sequential:
    """Linear(-BN)-ReLU blocks followed by a final Linear (and optionally an affine-free BN).

    ``num_layers`` counts the Linear layers: 1 gives a single projection, 2 gives SimCLR/MoCo v2's head,
    3 gives SimCLR's ImageNet head 2048-2048-128. Hidden Linear layers drop their bias when followed by BN.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=bias and not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=bias and not last_batch_norm))
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)
