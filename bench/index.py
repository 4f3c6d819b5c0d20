"""How long data=folder takes to list a big tree: cold (walk + write the index), warm (read the index and
check it is fresh), read only (the processes that are not first), against os.walk and torchvision's
ImageFolder, on fabricated trees of small files, nested like ImageNet (1000 folders x 200) and flat.

Prints a table of medians (seconds); no assertions. The files are empty (listing cost does not depend on
their size). The operating system's file cache is not dropped: "cold" means no index, not a cold disk.

    PYTHONPATH=. python bench/index.py [--files 200000] [--folders 1000] [--repeats 3] [--dir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cssl.data.listing import list_images, read_index


def fabricate(root: Path, files: int, folders: int) -> None:
    """``files`` empty .JPEG files in ``folders`` folders (1: flat)."""
    if root.is_dir() and sum(1 for _ in root.rglob("*.JPEG")) == files:
        return
    shutil.rmtree(root, ignore_errors=True)
    per = -(-files // folders)
    made = 0
    for i in range(folders):
        folder = root / f"n{i:08d}" if folders > 1 else root
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(min(per, files - made)):
            open(folder / f"img_{i:04d}_{j:06d}.JPEG", "wb").close()
        made += min(per, files - made)


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def os_walk(root: Path) -> list[str]:
    paths = [os.path.join(d, f) for d, _, names in os.walk(root) for f in names]
    paths.sort()
    return paths


def image_folder(root: Path, flat: bool) -> int:
    from torchvision.datasets import ImageFolder

    # flat: the folder as the single class of its parent (ImageFolder needs class folders)
    return len(ImageFolder(str(root.parent if flat else root), loader=lambda p: p).samples)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--folders", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the trees are made (kept); default a temporary folder")
    parser.add_argument("--quick", action="store_true", help="2,000 files in 10 folders, one repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.files, args.folders, args.repeats = 2000, 10, 1
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="cssl-index-bench-"))
    print(f"{args.files} files; median of {args.repeats}; cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    print(f"{'tree':<28} {'os.walk':>8} {'ImageFolder':>12} {'cold':>8} {'warm':>8} {'read':>8} {'index MB':>9}")
    for label, folders in ((f"nested {args.folders} x {args.files // args.folders}", args.folders), ("flat", 1)):
        root = base / "nested" if folders > 1 else base / "flat" / "images"
        start = time.perf_counter()
        fabricate(root, args.files, folders)
        made = time.perf_counter() - start
        shutil.rmtree(root / ".cssl", ignore_errors=True)  # torchvision would take it for a class folder
        walk_s, paths = timed(lambda r=root: os_walk(r), args.repeats)
        tv_s, tv_n = timed(lambda r=root, f=folders == 1: image_folder(r, f), args.repeats)
        cold_s, cold = timed(lambda r=root: list_images(root=str(r), index="rebuild"), args.repeats)
        warm_s, warm = timed(lambda r=root: list_images(root=str(r)), args.repeats)
        read_s, read = timed(lambda r=root: read_index(root=str(r)), args.repeats)
        assert len(cold.samples) == len(warm.samples) == len(read.samples) == len(paths) == tv_n == args.files
        size = (root / ".cssl" / "index.json").stat().st_size / 2**20
        print(
            f"{label:<28} {walk_s:8.2f} {tv_s:12.2f} {cold_s:8.2f} {warm_s:8.2f} {read_s:8.2f} {size:9.1f}"
            f"   (made in {made:.0f} s)"
        )
    print(f"load after: {os.getloadavg()[0]:.1f}")
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
