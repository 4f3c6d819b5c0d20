"""Augmentation throughput per core: cssl's batched on-device views against torchvision per-sample transforms.

cssl makes its views on the device from a collated uint8 batch (ViewAugment: antialiased crop, flip,
per-image colour jitter, grayscale, blur, normalise). The usual alternative runs torchvision transforms
image by image on PIL images inside DataLoader workers, one core each. Both are timed here on one thread,
so the figures are images per second per core (CPU). On a GPU the cssl side runs on the accelerator instead
and frees the loader cores; this script measures only the CPU cost.

    python bench/augment.py            # 32 px (CIFAR recipe) and 224 px (ImageNet recipe, blur on)
    python bench/augment.py --quick    # a few images, for a smoke test
"""

from __future__ import annotations

import argparse
import statistics
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


def time_both(
    tensor: torch.Tensor, pil: list[Image.Image], view: ViewAugment, pipeline: T.Compose, batch: int, repeats: int
) -> tuple[float, float]:
    """Images per second of both sides: batches of ``batch`` images, one normalised view each.

    cssl transforms a collated uint8 batch at once; torchvision, as one loader worker, transforms each PIL
    image and collates. The two are timed batch by batch in turn, so that a load change on a shared machine
    hits both alike; the rates are the batch size over the median batch time.
    """
    view(tensor[: min(4, batch)])  # warm-up
    pipeline(pil[0])
    times: dict[str, list[float]] = {"cssl": [], "tv": []}
    for _ in range(repeats):
        for start in range(0, len(pil), batch):
            x, chunk = tensor[start : start + batch], pil[start : start + batch]
            t0 = time.perf_counter()
            view(x)
            t1 = time.perf_counter()
            torch.stack([pipeline(im) for im in chunk])
            t2 = time.perf_counter()
            times["cssl"].append((t1 - t0) / len(chunk))
            times["tv"].append((t2 - t1) / len(chunk))
    return 1 / statistics.median(times["cssl"]), 1 / statistics.median(times["tv"])


def run(size: int, count: int, batch: int, repeats: int, seed: int = 0) -> tuple[float, float]:
    view_side, decoded, strength, blur_p = RECIPES[size]
    rng = np.random.default_rng(seed)
    arrays = rng.integers(0, 256, size=(count, decoded, decoded, 3), dtype=np.uint8)  # (N, H, W, 3)
    pil = [Image.fromarray(a) for a in arrays]
    tensor = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8, as collated
    view = ViewAugment(view_side, jitter_strength=strength, blur_p=blur_p, mean=MEAN, std=STD)
    torch.manual_seed(seed)
    return time_both(tensor, pil, view, torchvision_pipeline(view_side, strength, blur_p), batch, repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few images only (smoke test)")
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted(RECIPES), choices=sorted(RECIPES))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one core for both sides: per-core figures

    plan = {32: (1024, 256), 224: (128, 32)}  # images, batch
    if args.quick:
        plan, args.repeats = {32: (16, 8), 224: (4, 4)}, 1
    print(f"torch {torch.__version__}, 1 thread, images/s per core (one view per image)")
    print(f"{'size':>5} {'cssl batched':>13} {'torchvision':>12} {'cssl/tv':>8}")
    for size in args.sizes:
        count, batch = plan[size]
        k, tv = run(size, count, batch, args.repeats)
        print(f"{size:>5} {k:>13.1f} {tv:>12.1f} {k / tv:>8.2f}")


if __name__ == "__main__":
    main()
