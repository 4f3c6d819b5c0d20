"""Loader cost per core for image folders: views cut from the original image against the old and the usual paths.

On a fabricated folder of ImageNet-like JPEGs (500x375, ~100 KB, quality 90, textured), one thread, each
row is what one loader worker spends per image (file read from the page cache included, collate excluded),
timed in the thread's CPU time so that other processes on a shared machine inflate it little:

- ``new 2x224``: cssl's pretraining set (data=imagefolder): header -> two boxes in the original's pixels ->
  decode_jpeg -> two antialiased resizes to 224 (uint8 views; photometry runs on the device);
- ``new 2x224+4x96``: the same with four more 96 px views at scale (0.05, 0.14) (multi-crop);
- ``old 256 square``: the previous path: PIL decode, resize the short side to 256, centre crop 256 (the
  device then cropped both views from that square);
- ``torchvision RRC 2x224``: the usual per-sample pipeline's geometric part: PIL decode, then
  RandomResizedCrop(224) + flip + to-tensor twice;
- ``decode=gpu worker``: what a worker does with data.decode=gpu (read, header, boxes; decoding is on the device).

Then the coverage target: on a 2:1 image whose outer quarters have their own colours, the share of 224 px
views at scale (0.08, 1) that contain those colours, for the new path and for crops from the old square.

    PYTHONPATH=. python bench/loader.py            # 200 images, 3 repeats
    PYTHONPATH=. python bench/loader.py --quick    # a few images, for a smoke test
"""

from __future__ import annotations

import argparse
import io
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import median_seconds  # noqa: E402
from cssl.data import build_datamodule  # noqa: E402
from cssl.data.folder import FolderViews  # noqa: E402
from cssl.data.views import ViewSpec, decode_views  # noqa: E402
from cssl.runtime.measure import threads  # noqa: E402

TWO = [ViewSpec(224, (0.08, 1.0))] * 2
MULTI = TWO + [ViewSpec(96, (0.05, 0.14))] * 4


def imagenet_like(rng: np.random.Generator, width: int = 500, height: int = 375) -> Image.Image:
    """Smooth colour waves plus noise: a JPEG of ImageNet's typical size and bytes (~100 KB at quality 90)."""
    yy, xx = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 6, 3)
    waves = np.stack(
        [
            128 + 60 * np.sin(xx / 17 + phase[0]),
            128 + 60 * np.sin(yy / 11 + phase[1]),
            128 + 60 * np.sin((xx + yy) / 23 + phase[2]),
        ],
        -1,
    )
    return Image.fromarray(np.clip(waves + rng.normal(0, 18, waves.shape), 0, 255).astype(np.uint8))


def write_folder(root: Path, count: int, seed: int = 0) -> float:
    """``root/{train,val}/{c0,c1}/*.jpg`` (the images alternate between the two classes); returns the mean file
    size in KB."""
    rng = np.random.default_rng(seed)
    sizes = []
    for split, n in (("train", count), ("val", 2)):
        for i in range(n):
            folder = root / split / f"c{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{i:05d}.jpg"
            imagenet_like(rng).save(path, format="JPEG", quality=90)
            sizes.append(path.stat().st_size)
    return float(np.mean(sizes)) / 1e3


def torchvision_rrc(path: str) -> list[torch.Tensor]:
    with open(path, "rb") as f:
        image = Image.open(f).convert("RGB")
    crop = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.PILToTensor()])
    return [crop(image), crop(image)]


def images_per_second(get: Callable[[int], object], count: int, repeats: int) -> float:
    """Images per second of this thread's CPU time (median over ``repeats`` passes after a warm-up): the
    machine may be shared, and CPU time is what one worker core spends, whatever else runs beside it."""

    def epoch() -> None:
        for i in range(count):
            get(i)

    return count / median_seconds(epoch, repeats, clock=time.thread_time)


def coverage(draws: int, seed: int = 0) -> tuple[float, float]:
    """Share of 224 px views (scale 0.08-1) of a 2:1 image that contain its outer quarters' colours:
    (cut from the original, cropped from the old 256 centre square)."""
    height, width = 256, 512
    array = np.full((height, width, 3), 128, np.uint8)
    array[:, : width // 4] = (250, 0, 0)
    array[:, -width // 4 :] = (0, 0, 250)
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    data = out.getvalue()
    square = T.Compose([T.Resize(256), T.CenterCrop(256), T.PILToTensor()])(Image.open(io.BytesIO(data)).convert("RGB"))
    crop = T.RandomResizedCrop(224, scale=(0.08, 1.0))
    colours = torch.tensor([[250, 0, 0], [0, 0, 250]])

    def outer(view: torch.Tensor) -> bool:  # (3, S, S): any pixel close to an outer colour
        pixels = view.reshape(3, -1).T.int()[:, None, :]  # (P, 1, 3)
        return bool(((pixels - colours).abs().max(-1).values < 40).any())

    torch.manual_seed(seed)
    new = sum(outer(decode_views(data, [ViewSpec(224)])[0]) for _ in range(draws))
    old = sum(outer(crop(square)) for _ in range(draws))
    return new / draws, old / draws


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200, help="fabricated JPEGs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--draws", type=int, default=2000, help="views drawn for the coverage figure")
    parser.add_argument("--quick", action="store_true", help="a few images: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.repeats, args.draws = 4, 1, 40
    with threads(1):  # per-core figures
        run(args)


def run(args: argparse.Namespace) -> None:
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, one thread")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        kb = write_folder(root, args.count)
        dm = build_datamodule("imagefolder", root=str(root), batch_size=2, image_size=224)
        dm.check()
        old = dm.sets["labelled"]
        samples = old.samples
        rows = {
            "new 2x224": FolderViews(samples, TWO).__getitem__,
            "new 2x224+4x96": FolderViews(samples, MULTI).__getitem__,
            "old 256 square": old.__getitem__,
            "torchvision RRC 2x224": lambda i: torchvision_rrc(samples[i][0]),
            "decode=gpu worker": FolderViews(samples, MULTI, decode="gpu").__getitem__,
        }
        print(
            f"{args.count} JPEGs 500x375, {kb:.0f} KB on average; images/s per core: thread CPU time, median of {args.repeats}"
        )
        print(f"{'path':<24} {'img/s':>8} {'vs old':>7}")
        figures = {name: images_per_second(get, args.count, args.repeats) for name, get in rows.items()}
        for name, value in figures.items():
            print(f"{name:<24} {value:>8.0f} {value / figures['old 256 square']:>6.2f}x")
    new, old_share = coverage(args.draws)
    print(f"views reaching the outer quarters of a 2:1 image ({args.draws} views of 224 px, scale 0.08-1):")
    print(f"{'cut from the original':<24} {new:>8.2f}")
    print(f"{'from the old square':<24} {old_share:>8.2f}")


if __name__ == "__main__":
    main()
