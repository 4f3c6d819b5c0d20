"""Augmentation throughput per core: cssl's batched kornia views against torchvision per-sample transforms.

cssl makes its views on the device from a collated uint8 batch (ViewAugment). The usual alternative runs
torchvision transforms image by image on PIL images inside DataLoader workers, one core each. Both are
timed here on one thread, so the figures are images per second per core (CPU). On a GPU the kornia side
runs on the accelerator instead and frees the loader cores; this script measures only the CPU cost.

    python bench/augment.py            # 32 px (CIFAR recipe) and 224 px (ImageNet recipe, blur on)
    python bench/augment.py --quick    # a few images, for a smoke test
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from cssl.data import ViewAugment
from cssl.data.augment import blur_kernel_size

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# (view side, decoded side, colour strength, blur p): CIFAR at 32 px, ImageNet at 224 px from 256 px images
RECIPES = {32: (32, 32, 0.5, 0.0), 224: (224, 256, 1.0, 0.5)}


def torchvision_pipeline(size: int, strength: float, blur_p: float) -> T.Compose:
    s = strength
    steps: list = [
        T.RandomResizedCrop(size, scale=(0.08, 1.0)),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]
    if blur_p > 0:
        k = blur_kernel_size(size)
        steps.append(T.RandomApply([T.GaussianBlur(k, sigma=(0.1, 2.0))], p=blur_p))
    steps += [T.ToTensor(), T.Normalize(MEAN, STD)]
    return T.Compose(steps)


def time_kornia(images: torch.Tensor, view: ViewAugment, batch: int, repeats: int) -> float:
    """Images per second: batches of ``batch`` uint8 images -> one normalised view each."""
    view(images[: min(4, batch)])  # first calls set kornia up
    n, seconds = 0, 0.0
    for _ in range(repeats):
        for start in range(0, len(images), batch):
            x = images[start : start + batch]
            t0 = time.perf_counter()
            view(x)
            seconds += time.perf_counter() - t0
            n += len(x)
    return n / seconds


def time_torchvision(images: list[Image.Image], pipeline: T.Compose, batch: int, repeats: int) -> float:
    """Images per second of one loader worker: transform each PIL image, then collate the batch."""
    pipeline(images[0])
    n, seconds = 0, 0.0
    for _ in range(repeats):
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            t0 = time.perf_counter()
            torch.stack([pipeline(im) for im in chunk])
            seconds += time.perf_counter() - t0
            n += len(chunk)
    return n / seconds


def run(size: int, count: int, batch: int, repeats: int, seed: int = 0) -> tuple[float, float]:
    view_side, decoded, strength, blur_p = RECIPES[size]
    rng = np.random.default_rng(seed)
    arrays = rng.integers(0, 256, size=(count, decoded, decoded, 3), dtype=np.uint8)  # (N, H, W, 3)
    pil = [Image.fromarray(a) for a in arrays]
    tensor = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8, as collated
    view = ViewAugment(view_side, jitter_strength=strength, blur_p=blur_p, mean=MEAN, std=STD)
    torch.manual_seed(seed)
    kornia_rate = time_kornia(tensor, view, batch, repeats)
    tv_rate = time_torchvision(pil, torchvision_pipeline(view_side, strength, blur_p), batch, repeats)
    return kornia_rate, tv_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few images only (smoke test)")
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted(RECIPES), choices=sorted(RECIPES))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core for both sides: per-core figures

    plan = {32: (1024, 256), 224: (128, 64)}  # images, batch
    if args.quick:
        plan, args.repeats = {32: (16, 8), 224: (4, 4)}, 1
    print(f"torch {torch.__version__}, 1 thread, images/s per core (one view per image)")
    print(f"{'size':>5} {'kornia batched':>15} {'torchvision':>12} {'kornia/tv':>10}")
    for size in args.sizes:
        count, batch = plan[size]
        k, tv = run(size, count, batch, args.repeats)
        print(f"{size:>5} {k:>15.1f} {tv:>12.1f} {k / tv:>10.2f}")


if __name__ == "__main__":
    main()
