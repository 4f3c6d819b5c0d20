"""Tiny data sets written in the official on-disk formats, with planted pixels to check decoding.

- CIFAR-10/100: Python 2 pickles (protocol 2). Keys and names are Python 2 ``str`` (BINSTRING opcodes), so
  ``pickle.load(f, encoding="bytes")`` gives ``b"data"`` keys and ``encoding="latin1"`` (torchvision) gives
  ``"data"``, as with the real files. ``data`` is uint8 (N, 3072): the red, green and blue 32x32 planes, each
  row-major.
- STL-10: raw uint8 binaries; each image is 3 planes of 96x96 stored column-major (byte
  ``c * 9216 + col * 96 + row``); labels are uint8 1..10.
- Image folders: ``train/<class>/*.png|jpg`` and ``val/<class>/...`` of several sizes and modes.

Every image carries a planted pattern: in channel 0 the pixel (row 1, col 6) is 250 and (row 6, col 1) is 5;
in channel 2 the pixel (row 0, col 0) is the image's index within its file modulo 256 (STL: within its
split). A transposed or channel-swapped decoder fails these.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

HI = (0, 1, 6, 250)  # (channel, row, col, value)
LO = (0, 6, 1, 5)
STL_SIDE = 96
CIFAR_SIDE = 32


class Py2Str(bytes):
    """Bytes pickled as a Python 2 ``str`` (what the official CIFAR pickles hold)."""


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler lets us emit BINSTRING opcodes
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2str(self, obj: Py2Str) -> None:
        data = bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[Py2Str] = save_py2str


def _s(text: str) -> Py2Str:
    return Py2Str(text.encode("latin1"))


def dump_py2(obj: object, path: Path) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def planted_images(n: int, side: int, seed: int) -> np.ndarray:
    """(n, 3, side, side) uint8 noise in [20, 230] with the planted pattern (the layout the loaders must give)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(20, 231, size=(n, 3, side, side), dtype=np.uint8)
    for i in range(n):
        for c, r, col, v in (HI, LO):
            images[i, c, r, col] = v
        images[i, 2, 0, 0] = i % 256
    return images


def _cifar_rows(n: int, seed: int) -> np.ndarray:
    """(n, 3072) rows written from the format's byte formula (not from a reshape of the expected layout)."""
    expected = planted_images(n, CIFAR_SIDE, seed)
    rows = np.zeros((n, 3 * CIFAR_SIDE * CIFAR_SIDE), dtype=np.uint8)
    for c in range(3):
        for r in range(CIFAR_SIDE):
            rows[:, c * 1024 + r * 32 : c * 1024 + (r + 1) * 32] = expected[:, c, r, :]
    return rows


def cifar_expected(n: int, seed: int) -> np.ndarray:
    return planted_images(n, CIFAR_SIDE, seed)


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar10_labels(n: int, offset: int) -> list[int]:
    return [(offset + i) % 10 for i in range(n)]


def write_cifar10(root: Path, train_sizes: tuple[int, ...] = (7, 7, 6, 6, 6), test_size: int = 16) -> Path:
    """``root/cifar-10-batches-py``; batch k has seed k, the test batch seed 0; labels cycle 0..9."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    sizes = [*train_sizes, test_size]
    seeds = [1, 2, 3, 4, 5, 0]
    offset = 0
    for name, n, seed in zip(names, sizes, seeds, strict=True):
        batch = {
            _s("batch_label"): _s(f"fabricated {name}"),
            _s("labels"): cifar10_labels(n, offset),
            _s("data"): _cifar_rows(n, seed),
            _s("filenames"): [_s(f"img_{name}_{i:05d}.png") for i in range(n)],
        }
        dump_py2(batch, folder / name)
        offset += n
    meta = {
        _s("num_cases_per_batch"): max(sizes),
        _s("label_names"): [_s(c) for c in CIFAR10_CLASSES],
        _s("num_vis"): 3072,
    }
    dump_py2(meta, folder / "batches.meta")
    return folder


def cifar100_labels(n: int, seed: int) -> list[int]:
    """Fine labels: the first image 99 (the top of the range), then a spread over 0..99."""
    return [99 if i == 0 else (seed * 31 + i * 37) % 100 for i in range(n)]


def write_cifar100(root: Path, train_size: int = 40, test_size: int = 20) -> Path:
    """``root/cifar-100-python``: ``train`` (seed 11), ``test`` (seed 12), ``meta``."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train", train_size, 11), ("test", test_size, 12)):
        fine = cifar100_labels(n, seed)
        entry = {
            _s("filenames"): [_s(f"img_{i:05d}.png") for i in range(n)],
            _s("batch_label"): _s(f"{name} batch 1 of 1"),
            _s("fine_labels"): fine,
            _s("coarse_labels"): [f // 5 for f in fine],
            _s("data"): _cifar_rows(n, seed),
        }
        dump_py2(entry, folder / name)
    meta = {
        _s("fine_label_names"): [_s(f"fine_{i:02d}") for i in range(100)],
        _s("coarse_label_names"): [_s(f"coarse_{i:02d}") for i in range(20)],
    }
    dump_py2(meta, folder / "meta")
    return folder


def _stl_bytes(expected: np.ndarray) -> bytes:
    """Column-major planes from the byte formula c * 9216 + col * 96 + row."""
    n, side = expected.shape[0], STL_SIDE
    flat = np.zeros((n, 3 * side * side), dtype=np.uint8)
    for c in range(3):
        for col in range(side):
            flat[:, c * side * side + col * side : c * side * side + (col + 1) * side] = expected[:, c, :, col]
    return flat.tobytes()


STL_SEEDS = {"train": 21, "unlabeled": 22, "test": 23}


def stl10_labels(n: int, seed: int) -> np.ndarray:
    """0-based labels covering 0..9; the files store these + 1."""
    return np.array([(seed + i) % 10 for i in range(n)], dtype=np.int64)


def write_stl10(root: Path, train_size: int = 20, unlabeled_size: int = 12, test_size: int = 10) -> Path:
    """``root/stl10_binary`` with train/unlabeled/test images, labels, class names and folds."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train_size), ("unlabeled", unlabeled_size), ("test", test_size)):
        seed = STL_SEEDS[split]
        (folder / f"{split}_X.bin").write_bytes(_stl_bytes(planted_images(n, STL_SIDE, seed)))
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes((stl10_labels(n, seed) + 1).astype(np.uint8).tobytes())
    classes = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(classes) + "\n")
    folds = [" ".join(str((k + i) % train_size) for i in range(0, train_size, 2)) for k in range(10)]
    (folder / "fold_indices.txt").write_text("\n".join(folds) + "\n")
    return folder


# Image folders: (class, file name, size (w, h), kind). Colours are solid except "split" images: top half
# COLOR_TOP, bottom half COLOR_BOTTOM (an orientation check).
COLORS = {"cat": (10, 200, 30), "dog": (240, 16, 128), "zebra": (128, 128, 128)}
COLOR_TOP, COLOR_BOTTOM = (250, 0, 0), (0, 0, 250)


def _image(kind: str, size: tuple[int, int], color: tuple[int, int, int]):
    from PIL import Image

    if kind == "split":
        w, h = size
        arr = np.zeros((h, w, 3), dtype=np.uint8)
        arr[: h // 2] = COLOR_TOP
        arr[h // 2 :] = COLOR_BOTTOM
        return Image.fromarray(arr, "RGB")
    if kind == "gray":
        return Image.new("L", size, color[0])
    if kind == "rgba":
        return Image.new("RGBA", size, (*color, 255))
    return Image.new("RGB", size, color)


IMAGEFOLDER_TRAIN = [
    ("cat", "a.png", (40, 30), "rgb"),
    ("cat", "b.jpg", (64, 48), "rgb"),
    ("cat", "c.png", (50, 70), "split"),
    ("dog", "a.png", (33, 33), "rgba"),
    ("dog", "b.jpeg", (80, 45), "rgb"),
    ("dog", "c.png", (45, 45), "rgb"),
    ("zebra", "a.png", (60, 40), "gray"),
    ("zebra", "b.JPG", (41, 77), "rgb"),
]
IMAGEFOLDER_VAL = [
    ("cat", "v.png", (36, 36), "rgb"),
    ("dog", "v.jpg", (52, 39), "rgb"),
    ("zebra", "v.png", (44, 60), "split"),
    ("zebra", "w.png", (39, 39), "gray"),
]


def write_imagefolder(root: Path, *, val_classes: tuple[str, ...] | None = None) -> Path:
    """``root/train`` and ``root/val``; ``val_classes`` restricts val (a class mismatch)."""
    for split, entries in (("train", IMAGEFOLDER_TRAIN), ("val", IMAGEFOLDER_VAL)):
        for cls, name, size, kind in entries:
            if split == "val" and val_classes is not None and cls not in val_classes:
                continue
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            image = _image(kind, size, COLORS[cls])
            if name.lower().endswith((".jpg", ".jpeg")):
                image.save(folder / name, format="JPEG", quality=95)
            else:
                image.save(folder / name, format="PNG")
    return root
