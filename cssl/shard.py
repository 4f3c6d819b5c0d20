"""``python -m cssl.shard SRC OUT``: a folder of images or a file list, written as LitData streaming shards.

Each record holds the image file's original encoded bytes (views are still cut from the original image by
:func:`cssl.data.views.decode_views`), its label (-1 when unlabelled) and a sample id. Records are written in
a seeded random order of the readable listed files; the id is the record's index in that order, which is also
its index in the shards (LitData keeps the order with checkpoints on: each writer takes a contiguous slice, and
the index lists the writers' chunks in order), and the manifest lists the labels in the same order. ``data=shards data.root=OUT`` trains on
them (:mod:`cssl.data.shards`).

The conversion is resumable: LitData's own checkpoints (``OUT/.checkpoints``) record the chunks each
writer finished, and a rerun with the same SRC and options continues from there; nothing is written
twice. ``OUT/manifest.json`` (written atomically) says what the shards hold: count, classes, source,
bytes, format version, and ``complete`` once LitData's ``index.json`` is written.

Usage::

    python -m cssl.shard ~/photos shards/photos                      # unlabelled
    python -m cssl.shard ~/imagenet/train shards/in1k --labels folders --workers 8
    python -m cssl.shard list.txt shards/mine --labels list           # a file list with a label column
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from cssl.core import storage
from cssl.core.errors import ConfigError, check, check_int

FORMAT = "cssl-shards"
VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.json"  # LitData's index, written last by litdata.optimize
DEFAULT_CHUNK_BYTES = "64MB"
SEED = 0  # of the record order


class ReadRecord:
    """``optimize``'s function: sample id -> record (picklable, for LitData's worker processes)."""

    def __init__(self, samples: list[tuple[str, int]]) -> None:
        self.samples = samples

    def __call__(self, index: int) -> dict[str, Any]:
        path, label = self.samples[index]
        with open(path, "rb") as f:
            data = f.read()
        return {"id": int(index), "label": int(label), "image": data}


def _listing(src: str, labels: str) -> Any:
    from cssl.data.listing import list_images

    check(os.path.exists(src), f"shard: SRC {src} does not exist; give a folder of images or a file list")
    if os.path.isdir(src):
        return list_images(root=src, labels=labels)
    return list_images(files=src, labels=labels)


def _read_manifest(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    storage.atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _check_out(out: Path, plan: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of an earlier conversion of the same plan into ``out`` (to resume or to stop at), None
    for a new or empty ``out``; a one-line error for an ``out`` that holds anything else."""
    if not out.exists():
        return None
    check(out.is_dir(), f"shard: OUT {out} is a file; give a folder (new or empty)")
    if not any(out.iterdir()):
        return None
    manifest = _read_manifest(out)
    check(
        manifest is not None and manifest.get("format") == FORMAT,
        f"shard: OUT {out} is not empty and holds no cssl shards ({MANIFEST}); give a new or empty folder",
    )
    assert manifest is not None
    differ = [k for k in plan if manifest.get("plan", {}).get(k) != plan[k]]
    check(
        not differ,
        f"shard: OUT {out} holds shards of another conversion (different {', '.join(differ)}); "
        "give a new or empty folder, or the same SRC and options to finish it",
    )
    return manifest


def shard(
    src: str, out: str, *, labels: str = "none", chunk_bytes: str = DEFAULT_CHUNK_BYTES, workers: int = 1
) -> dict[str, Any]:
    """Convert ``src`` (a folder or a file list) into shards under ``out``; returns the manifest."""
    check_int("--workers", workers, 1)
    listing = _listing(src, labels)
    readable = [(p, y) for p, y in listing.samples if os.path.isfile(p) and os.access(p, os.R_OK)]
    check(readable, f"shard: none of the {len(listing.samples)} files listed from {listing.source} can be read")
    # records in a seeded random order: LitData shuffles chunks and windows within them, so a sorted (class by
    # class) listing would otherwise give batches of one class
    order = torch.randperm(len(readable), generator=torch.Generator().manual_seed(SEED)).tolist()
    samples = [readable[i] for i in order]
    out_dir = Path(os.path.abspath(os.path.expanduser(out)))
    plan = {
        "source": listing.source,
        "labels": labels,
        "count": len(samples),
        "chunk_bytes": str(chunk_bytes),
        "workers": workers,
    }
    manifest = _check_out(out_dir, plan)
    if manifest is not None and manifest.get("complete") and (out_dir / INDEX).is_file():
        print(f"{out_dir} already holds the {manifest['count']} records of {listing.source}; nothing to do")
        return manifest
    out_dir.mkdir(parents=True, exist_ok=True)
    storage.check_writable(out_dir, "OUT")
    resuming = manifest is not None
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "plan": plan,
        "source": listing.source,
        "classes": list(listing.classes),
        "listed": len(listing.samples),
        "skipped_in_listing": dict(listing.skipped),
        "unreadable": len(listing.samples) - len(samples),
        # the label of each record, in record order (= sample id), when labelled: subsets without a pass
        "labels": [y for _, y in samples] if listing.classes else None,
        "keys": {"id": "int", "label": "int", "image": "bytes"},
        "complete": False,
    }
    _write_manifest(out_dir, manifest)
    print(("resuming: " if resuming else "") + listing.summary())

    import litdata

    if not (resuming and (out_dir / INDEX).is_file()):  # else LitData finished and only the manifest was left
        litdata.optimize(
            fn=ReadRecord(samples),
            inputs=list(range(len(samples))),
            output_dir=str(out_dir),
            chunk_bytes=chunk_bytes,
            num_workers=workers,
            use_checkpoint=True,  # a rerun continues from the chunks already written
            reorder_files=False,
            start_method="spawn",
            verbose=True,  # LitData's progress bar
        )
    index = json.loads((out_dir / INDEX).read_text())
    count = sum(int(c["chunk_size"]) for c in index["chunks"])
    nbytes = sum(int(c.get("chunk_bytes", 0)) for c in index["chunks"])
    check(count == len(samples), f"shard: {out_dir} holds {count} records, not {len(samples)}; convert again")
    manifest.update(count=count, bytes=nbytes, complete=True)
    _write_manifest(out_dir, manifest)
    missing = f"; {manifest['unreadable']} listed files could not be read" if manifest["unreadable"] else ""
    print(f"wrote {count} records ({storage.human(nbytes)}) to {out_dir}{missing}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cssl.shard", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="a folder of images (any depth) or a file list (text or CSV)")
    parser.add_argument("out", help="the shard folder to write (new, empty, or an interrupted conversion)")
    parser.add_argument("--labels", default="none", choices=("none", "folders", "list"))
    parser.add_argument("--chunk-bytes", default=DEFAULT_CHUNK_BYTES, help="size of one chunk file, e.g. 64MB")
    parser.add_argument("--workers", type=int, default=1, help="writer processes")
    args = parser.parse_args(argv)
    try:
        shard(args.src, args.out, labels=args.labels, chunk_bytes=args.chunk_bytes, workers=args.workers)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
