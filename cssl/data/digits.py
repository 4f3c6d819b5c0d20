"""scikit-learn's bundled 8x8 digits and their fixed train/held-out split, shared by ``data=digits`` and the lab
dataset's generator (:mod:`cssl.data.lab`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def digits_split() -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """scikit-learn's 8x8 digits ((M, 1, 8, 8) in [0, 1], (M,) labels) of the fixed stratified 80/20 split
    (1437 train / 360 held-out)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div(16.0).unsqueeze(1)
    labels = torch.from_numpy(digits.target).long()
    train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=0, stratify=digits.target)
    return (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx])
