"""Label subsets for low-label evaluation: a stratified fraction or count per class (seeded, the same subset
for every run with that seed, whatever else the config says), or a list file in the format of SimCLR's
published ImageNet 1%/10% lists (google-research/simclr imagenet_subsets/1percent.txt: one file name per
line, e.g. ``n01440764_10026.JPEG``).

Image folders are matched by file name (the base name of each image, as in SimCLR's lists); the in-memory
datasets (digits, lab, CIFAR, STL-10), which have no file names, take one integer index per line instead:
the position of the image in the labelled training split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from cssl.core import storage
from cssl.core.errors import ConfigError, check, is_int, is_number


def dataset_labels(dataset: Dataset) -> Tensor:
    """(N,) int64 labels of a labelled dataset without loading its images."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    for attr in ("labels", "targets"):
        if hasattr(dataset, attr):
            return torch.as_tensor(getattr(dataset, attr), dtype=torch.long).flatten()
    if hasattr(dataset, "samples"):
        return torch.as_tensor([label for _, label in dataset.samples], dtype=torch.long)
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)  # type: ignore[arg-type]


def dataset_names(dataset: Dataset) -> list[str] | None:
    """The file name of each image (image folders), or None for in-memory datasets."""
    samples = getattr(dataset, "samples", None)
    return None if samples is None else [os.path.basename(path) for path, _ in samples]


def stratified(labels: Tensor, *, seed: int, fraction: float | None = None, per_class: int | None = None) -> Tensor:
    """Sorted indices of a stratified subset: in each class, ``round(fraction * n_c)`` images (at least one) or
    ``per_class`` images, drawn by a generator seeded with ``seed`` alone, so that every run with that seed
    (and the same labelled set) gets the same subset. Unlabelled entries (-1) are never chosen."""
    check((fraction is None) != (per_class is None), "give one of data.label_fraction and data.labels_per_class")
    generator = torch.Generator().manual_seed(int(seed))
    chosen = []
    for c in torch.unique(labels[labels >= 0]).tolist():
        members = torch.nonzero(labels == c).flatten()  # (n_c,)
        n = max(1, round(fraction * len(members))) if fraction is not None else int(per_class)  # type: ignore[arg-type]
        if n > len(members):
            raise ConfigError(
                f"data.labels_per_class={per_class}: class {c} has only {len(members)} labelled images; "
                f"lower data.labels_per_class (at most {int(torch.bincount(labels[labels >= 0]).min())})"
            )
        order = torch.randperm(len(members), generator=generator)
        chosen.append(members[order[:n]])
    return torch.sort(torch.cat(chosen)).values


def read_subset_file(path: Path, names: list[str] | None, size: int) -> Tensor:
    """Sorted indices named by a list file: file names matched against ``names`` (image folders) or integer
    indices in [0, size) when ``names`` is None. Blank lines and lines starting with ``#`` are skipped."""
    try:
        lines = [line.strip() for line in path.read_text().splitlines()]
    except OSError as err:
        raise ConfigError(f"data.label_subset: cannot read {path} ({err.strerror or err})") from None
    entries = [line for line in lines if line and not line.startswith("#")]
    check(len(entries) > 0, f"data.label_subset: {path} names no images")
    if names is None:
        bad = [e for e in entries if not (e.isdigit() and int(e) < size)]
        check(
            not bad,
            f"data.label_subset: {len(bad)} of {len(entries)} lines of {path} are not image indices in [0, {size}) "
            f"(this dataset has no file names; one index per line), first: {', '.join(bad[:3])}",
        )
        return torch.tensor(sorted({int(e) for e in entries}), dtype=torch.long)
    where: dict[str, int] = {}
    for i, name in enumerate(names):
        where.setdefault(name, i)
    missing = [e for e in entries if os.path.basename(e) not in where]
    check(
        not missing,
        f"data.label_subset: {len(missing)} of {len(entries)} file names in {path} are not in the labelled "
        f"images, first: {', '.join(missing[:3])}",
    )
    return torch.tensor(sorted({where[os.path.basename(e)] for e in entries}), dtype=torch.long)


@dataclass(frozen=True)
class LabelSubset:
    """Which labelled images an evaluation trains on.

    Attributes:
        fraction: stratified fraction of each class, in (0, 1].
        per_class: images per class.
        file: a list file (see the module docstring).
        seed: of the stratified draw.
    """

    fraction: float | None = None
    per_class: int | None = None
    file: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        given = [k for k, v in (("label_fraction", self.fraction), ("labels_per_class", self.per_class),
                                ("label_subset", self.file)) if v is not None]  # fmt: skip
        check(len(given) <= 1, f"give at most one of data.{', data.'.join(given)}")
        check(
            self.fraction is None or (is_number(self.fraction) and 0 < self.fraction <= 1),
            f"data.label_fraction must be in (0, 1], got {self.fraction!r}",
        )
        check(
            self.per_class is None or (is_int(self.per_class) and self.per_class >= 1),
            f"data.labels_per_class must be an integer >= 1, got {self.per_class!r}",
        )

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.fraction, self.per_class, self.file))

    @property
    def tag(self) -> str | None:
        """A short name of the subset for metric keys: ``frac0.01``, ``per10``, ``list_1percent``; None for all
        labels."""
        if self.fraction is not None:
            return f"frac{float(self.fraction):g}"
        if self.per_class is not None:
            return f"per{int(self.per_class)}"
        if self.file is not None:
            return "list_" + Path(self.file).stem
        return None

    def indices(self, dataset: Dataset) -> Tensor:
        """Sorted indices of the chosen images in ``dataset`` (the labelled training split)."""
        if self.file is not None:
            return read_subset_file(Path(os.path.expanduser(self.file)), dataset_names(dataset), len(dataset))  # type: ignore[arg-type]
        return stratified(dataset_labels(dataset), seed=self.seed, fraction=self.fraction, per_class=self.per_class)


class SubsetWithSamples(Subset):
    """A :class:`Subset` that keeps an image folder's ``samples`` (paths and labels) for loaders that cut
    crops from the original files."""

    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        super().__init__(dataset, indices)
        if hasattr(dataset, "samples"):
            self.samples = [dataset.samples[i] for i in indices]  # type: ignore[attr-defined]


def write_subset(run_dir: Path, dataset: Dataset, indices: Tensor) -> Path:
    """``RUN/label_subset.txt``: the chosen images in the list-file format (file names, or indices for the
    in-memory datasets), so that ``data.label_subset=RUN/label_subset.txt`` repeats the subset."""
    names = dataset_names(dataset)
    lines = [names[i] for i in indices.tolist()] if names is not None else [str(i) for i in indices.tolist()]
    path = run_dir / "label_subset.txt"
    storage.atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def describe(subset: LabelSubset, indices: Tensor, dataset: Dataset, path: Path | None) -> dict[str, Any]:
    """What summary.json records about the subset."""
    labels = dataset_labels(dataset)[indices]
    return {
        "tag": subset.tag,
        "label_fraction": subset.fraction,
        "labels_per_class": subset.per_class,
        "label_subset": subset.file,
        "seed": subset.seed,
        "images": len(indices),
        "of": len(dataset),
        "classes": int(torch.unique(labels).numel()),
        "file": None if path is None else str(path),
    }
