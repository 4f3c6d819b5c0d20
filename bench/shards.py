"""Read throughput per loader core: LitData shards (data=shards) against the image folder (data=folder), views included.

On fabricated ImageNet-like JPEGs (500x375, ~100 KB, quality 90; bench/loader.py's images), converted once with
``python -m cssl.shard`` (one writer; the conversion rate is printed too), one thread, each row is what one loader
worker spends per image for two 224 px views cut from the original (read + header + boxes + decode + two
antialiased resizes; collate excluded):

- ``folder``: :class:`cssl.data.folder.FolderViews` over the listed files in a shuffled order (one file per
  image, read through the page cache);
- ``shards``: the ``data=shards`` training stream (LitData's StreamingDataset: chunks mapped in place, records
  shuffled within windows of chunks) with the same views, seeded per record;
- ``... read only``: the same without decoding, what the storage path itself costs per image.

Figures are images/s of the thread's CPU time (median over repeats after a warm-up), and of the wall clock;
the files and chunks sit in the page cache (a warm local disk): what a network filesystem or an object store
adds is latency that the folder path pays per file and the shards per chunk.

    PYTHONPATH=. python bench/shards.py                 # 2000 images, 3 repeats
    PYTHONPATH=. python bench/shards.py --quick         # a few images, for a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loader import imagenet_like  # noqa: E402
from cssl.data.folder import FolderViews  # noqa: E402
from cssl.data.listing import list_images  # noqa: E402
from cssl.data.resumable import draw_seed  # noqa: E402
from cssl.data.shards import _streaming_views_class, quiet  # noqa: E402
from cssl.data.views import ViewSpec  # noqa: E402
from cssl.runtime.measure import threads  # noqa: E402
from cssl.shard import shard  # noqa: E402

TWO = [ViewSpec(224, (0.08, 1.0))] * 2


def write_flat(root: Path, count: int, seed: int = 0) -> float:
    """``count`` JPEGs in one folder; returns the mean file size in KB."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    sizes = []
    for i in range(count):
        path = root / f"{i:05d}.jpg"
        imagenet_like(rng).save(path, format="JPEG", quality=90)
        sizes.append(path.stat().st_size)
    return float(np.mean(sizes)) / 1e3


def timed(epoch: Callable[[], int], repeats: int) -> tuple[float, float]:
    """(images/s of thread CPU time, images/s of wall time): medians over ``repeats`` after a warm-up pass."""
    epoch()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.thread_time(), time.perf_counter()
        n = epoch()
        cpu.append(n / (time.thread_time() - c0))
        wall.append(n / (time.perf_counter() - w0))
    return float(np.median(cpu)), float(np.median(wall))


def consume(items: Iterable) -> int:
    n = 0
    for _ in items:
        n += 1
    return n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="fabricated JPEGs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-bytes", default="64MB")
    parser.add_argument("--quick", action="store_true", help="a few images: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.repeats, args.chunk_bytes = 12, 1, "200kb"
    with threads(1):  # per-core figures
        run(args)


def run(args: argparse.Namespace) -> None:
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; one thread per reader")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "images", Path(tmp) / "shards"
        kb = write_flat(src, args.count)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            manifest = shard(str(src), str(out), chunk_bytes=args.chunk_bytes, workers=1)
        convert = time.perf_counter() - start
        chunks = len(list(out.glob("chunk-*.bin")))
        print(
            f"{args.count} JPEGs of {kb:.0f} KB (500x375); shards: {chunks} chunks of {args.chunk_bytes}, "
            f"{manifest['bytes'] / 1e6:.1f} MB; conversion {args.count / convert:.0f} images/s wall "
            f"(one writer, process start included)"
        )
        samples = list_images(root=str(src)).samples
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(0)).tolist()
        folder = FolderViews(samples, TWO)

        def folder_epoch(decode: bool = True) -> int:
            if decode:
                return consume(folder[(i, draw_seed(0, 0, i))] for i in order)
            n = 0
            for i in order:
                with open(samples[i][0], "rb") as f:
                    n += bool(f.read())
            return n

        quiet()
        stream = _streaming_views_class()(
            str(out), views=TWO, decode="cpu", skip_bad_images=True, draw=0, source=str(out),
            cache_dir=None, count=manifest["count"], shuffle=True, drop_last=False, seed=0,
        )  # fmt: skip

        def shard_epoch(decode: bool = True) -> int:
            if decode:
                return consume(iter(stream))
            return consume(record for record in _records(stream))

        rows = [
            ("folder 2x224", timed(folder_epoch, args.repeats)),
            ("shards 2x224", timed(shard_epoch, args.repeats)),
            ("folder read only", timed(lambda: folder_epoch(False), args.repeats)),
            ("shards read only", timed(lambda: shard_epoch(False), args.repeats)),
        ]
        print(f"{'path':<20}{'images/s (CPU)':>16}{'images/s (wall)':>17}")
        for name, (cpu, wall) in rows:
            print(f"{name:<20}{cpu:>16.0f}{wall:>17.0f}")


def _records(stream) -> Iterable:
    """The stream's records without decoding (the base class's item access)."""
    from litdata import StreamingDataset

    original = type(stream).__getitem__
    try:
        type(stream).__getitem__ = StreamingDataset.__getitem__
        yield from iter(stream)
    finally:
        type(stream).__getitem__ = original


if __name__ == "__main__":
    main()
