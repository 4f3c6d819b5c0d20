"""A 2-D picture of an embedding: UMAP if installed, else t-SNE from scikit-learn, coloured by class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cssl.core.storage import atomic_write


def project_2d(feats: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, F) -> (N, 2) and the name of the method used."""
    try:
        import umap  # type: ignore[import-not-found]

        return umap.UMAP(n_components=2, random_state=seed).fit_transform(feats), "UMAP"
    except ImportError:
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(feats) - 1) // 3)))
        return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(feats), "t-SNE"


def embedding_map(feats: Tensor, labels: Tensor, path: Path, *, title: str = "", max_points: int = 5000) -> Path:
    """Write a PNG scatter of the 2-D projection of ``feats`` (N, F) coloured by ``labels`` (N,)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    feats, labels = feats.float().cpu(), labels.cpu()
    if feats.shape[0] > max_points:
        keep = torch.randperm(feats.shape[0], generator=torch.Generator().manual_seed(0))[:max_points]
        feats, labels = feats[keep], labels[keep]
    xy, method = project_2d(feats.numpy())
    fig, ax = plt.subplots(figsize=(6, 6), dpi=120)
    points = ax.scatter(xy[:, 0], xy[:, 1], c=labels.numpy(), cmap="tab10" if int(labels.max()) < 10 else "tab20", s=6)
    if int(labels.max()) < 20:
        ax.legend(*points.legend_elements(), title="class", loc="best", fontsize=7, markerscale=0.8)
    ax.set_title(f"{title} ({method} of held-out embeddings)".strip())
    ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    try:  # temporary file and rename: a full disk leaves no partial picture
        atomic_write(Path(path), lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)
    return path


def log_image(logger: Any, key: str, path: Path, step: int) -> None:
    """Send a PNG to W&B when that is the logger (others: nothing)."""
    from pytorch_lightning.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        logger.log_image(key=key, images=[str(path)], step=step)
