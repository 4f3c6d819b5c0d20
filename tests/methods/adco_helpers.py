"""A tiny AdCo (conv + global pool, no BN) shared by the method and DDP tests; light to import in spawned ranks."""

from __future__ import annotations

import torch

from cssl.methods.adco import AdCo
from cssl.models.optim import OptimSettings
from tests.conftest import TinyNet

B, D, WIDTH = 4, 8, 6
MOCO_T, MEM_T, MEM_LR, MEM_M, MEM_WD = 0.12, 0.2, 0.5, 0.9, 1e-4


def tiny_net() -> TinyNet:
    """Conv + global pool, no BN: rows are independent, so batch composition cannot change a row."""
    return TinyNet(WIDTH, bn=False)


def tiny_adco(seed: int = 0, **kwargs) -> AdCo:
    torch.manual_seed(seed)
    options = {
        "num_classes": 3,
        "batch_size": B,
        "optim": OptimSettings(name="sgd", lr=0.1, scale_lr=False),
        "temperature": MOCO_T,
        "bank_size": 5,
        "bank_init": "random",
        "mem_t": MEM_T,
        "mem_lr": MEM_LR,
        "mem_momentum": MEM_M,
        "mem_wd": MEM_WD,
        "momentum": 0.9,
        "proj_hidden_dim": 10,
        "proj_output_dim": D,
        **kwargs,
    }
    return AdCo(tiny_net(), **options)
