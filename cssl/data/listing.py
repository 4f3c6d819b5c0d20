"""Which images a run reads: a folder at any depth or a file list, labels optional.

:func:`list_images` returns a :class:`Listing`: sorted ``(path, label)`` pairs (label -1 when the image has
none), the class names and what was left out and why. Rules:

- a folder (``root``) is walked at any depth; hidden files and folders (names starting with ``.``) are
  ignored; files are images by their extension (case-insensitive, :data:`IMAGE_EXTENSIONS`), others are
  skipped and counted, not an error; symbolic links are followed, each real folder once (no loops);
- a file list (``files``) is a text file with one path per line, relative to the list's folder or
  absolute, optionally followed by a TAB and a label; or a ``.csv`` file with ``path[,label]`` columns and
  an optional header row (a first row whose first cell is ``path``); blank lines and lines starting with
  ``#`` are ignored. Listed files are not opened or checked here: a missing or unreadable one is skipped
  and counted during training like any unreadable image;
- ``labels="none"``: every label is -1; ``"folders"``: the first-level subfolder of the root names the class
  (as torchvision's ImageFolder; images directly in the root are skipped and counted), or for a file list
  the folder that holds the file; ``"list"``: the label column of the file list (rows without one are -1,
  so a few labelled rows are enough for the monitors).

A folder's walk is cached in an index file (``index``): ``auto`` keeps it in ``ROOT/.cssl/index.json`` when
the root can be written, else in ``$CSSL_CACHE/index/<hash of the root>.json`` (default cache folder
``~/.cache/cssl``); ``rebuild`` walks again and rewrites it; ``off`` always walks and writes nothing; any other
value is the index file's path. The index holds the root, the file count, the relative paths, what was
skipped and the modification time of every folder walked: adding, removing or renaming a file or folder
changes its folder's time, so a changed tree is detected by one ``stat`` per folder (about 1000 for an
ImageNet-like tree, against 1.28M entries to list) and the index is rebuilt with one line saying why. Edits
of a file's content in place are not detected (they do not change the listing). On a file system whose
times are coarse (1-2 s on some network mounts) a change within that interval of the walk can go unseen:
``data.index=rebuild`` then walks again. A file list is read directly (it is its own index).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cssl.core.errors import ConfigError, RunError
from cssl.core.storage import atomic_write_text

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
LABELS = ("none", "folders", "list")
INDEX_VERSION = 1
INDEX_DIR = ".cssl"  # hidden: never listed itself


@dataclass(frozen=True)
class Listing:
    """The images of a run.

    Attributes:
        samples: ``(absolute path, label index)`` pairs sorted by path; the label is -1 when unlabelled.
        classes: the class names (index = label); empty when unlabelled.
        skipped: what was left out and why, e.g. ``{"not an image": 3, "hidden": 2}``.
        source: the root folder or the list file it came from.
    """

    samples: list[tuple[str, int]]
    classes: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    source: str = ""

    @property
    def labelled(self) -> list[tuple[str, int]]:
        """The samples that have a label."""
        return [s for s in self.samples if s[1] >= 0]

    def summary(self) -> str:
        """One line: how many images, classes, labelled ones, and what was skipped."""
        n = len(self.samples)
        parts = [f"{n} images in {self.source}"]
        if self.classes:
            parts.append(f"{len(self.classes)} classes, {sum(1 for _, y in self.samples if y >= 0)} labelled")
        else:
            parts.append("unlabelled")
        if self.skipped:
            left = ", ".join(f"{count} {why}" for why, count in sorted(self.skipped.items()))
            parts.append(f"skipped {left}")
        return "; ".join(parts)


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _prefix(root: str) -> str:
    return root if root.endswith(os.sep) else root + os.sep


def _count(skipped: dict[str, int], why: str) -> None:
    skipped[why] = skipped.get(why, 0) + 1


def walk(root: str) -> tuple[list[str], dict[str, int], list[tuple[str, int]]]:
    """Image paths under ``root`` (sorted), the skip counts, and ``(folder, mtime_ns)`` of every folder
    visited (for a staleness check). Symbolic links are followed; a real folder seen before is skipped."""
    paths: list[str] = []
    skipped: dict[str, int] = {}
    folders: list[tuple[str, int]] = []
    seen: set[tuple[int, int]] = set()
    st = os.stat(root)
    seen.add((st.st_dev, st.st_ino))
    folders.append((root, st.st_mtime_ns))
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            _count(skipped, "unreadable folder")
            continue
        for entry in entries:
            if entry.name.startswith("."):
                if entry.name != INDEX_DIR:
                    _count(skipped, "hidden")
                continue
            try:
                if entry.is_dir():
                    st = entry.stat()
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        _count(skipped, "folder seen before (link)")
                        continue
                    seen.add(key)
                    folders.append((entry.path, st.st_mtime_ns))
                    stack.append(entry.path)
                elif entry.is_file():
                    if is_image(entry.name):
                        paths.append(entry.path)
                    else:
                        _count(skipped, "not an image")
                else:
                    _count(skipped, "broken link or special file")
            except OSError:
                _count(skipped, "unreadable entry")
    paths.sort()
    return paths, skipped, folders


def _label_from_folders(
    paths: list[str], root: str, skipped: dict[str, int]
) -> tuple[list[tuple[str, int]], list[str]]:
    pairs: list[tuple[str, str]] = []
    prefix = _prefix(root)
    for path in paths:
        head, sep, _ = path[len(prefix) :].partition(os.sep)
        if not sep:
            _count(skipped, "not in a class folder")
            continue
        pairs.append((path, head))
    classes = sorted({c for _, c in pairs})
    index = {c: i for i, c in enumerate(classes)}
    return [(p, index[c]) for p, c in pairs], classes


def read_list(files: str) -> tuple[list[tuple[str, str | None]], dict[str, int]]:
    """``(absolute path, label or None)`` rows of a file list (see the module's rules) and the skip counts."""
    path = Path(files)
    if not path.is_file():
        raise ConfigError(f"data.files: {files} is not a file; give a text or .csv list of image paths")
    base = path.resolve().parent
    rows: list[tuple[str, str | None]] = []
    skipped: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as f:
        if path.suffix.lower() == ".csv":
            cells = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
            if cells and cells[0][0].strip().lower() == "path":
                cells = cells[1:]
        else:
            cells = []
            for line in f:
                line = line.rstrip("\r\n")
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                cells.append(line.split("\t"))
    for row in cells:
        name = row[0].strip()
        label = row[1].strip() if len(row) > 1 and row[1].strip() else None
        if not is_image(name):
            _count(skipped, "not an image")
            continue
        full = name if os.path.isabs(name) else os.path.normpath(os.path.join(base, name))
        rows.append((full, label))
    rows.sort(key=lambda r: r[0])
    return rows, skipped


def _from_files(files: str, labels: str) -> Listing:
    rows, skipped = read_list(files)
    if labels == "none":
        samples, classes = [(p, -1) for p, _ in rows], []
    elif labels == "folders":
        names = [os.path.basename(os.path.dirname(p)) for p, _ in rows]
        classes = sorted(set(names))
        index = {c: i for i, c in enumerate(classes)}
        samples = [(p, index[c]) for (p, _), c in zip(rows, names, strict=True)]
    else:
        classes = sorted({y for _, y in rows if y is not None})
        index = {c: i for i, c in enumerate(classes)}
        samples = [(p, index[y] if y is not None else -1) for p, y in rows]
    return Listing(samples, classes, skipped, str(Path(files).resolve()))


def _from_walk(root: str, labels: str, paths: list[str], skipped: dict[str, int]) -> Listing:
    skipped = dict(skipped)
    if labels == "folders":
        samples, classes = _label_from_folders(paths, root, skipped)
    else:
        samples, classes = [(p, -1) for p in paths], []
    return Listing(samples, classes, skipped, root)


def check_request(root: str | None, files: str | None, labels: str) -> None:
    if labels not in LABELS:
        raise ConfigError(f"data.labels={labels!r}: choose one of {', '.join(LABELS)}")
    if (root is None) == (files is None):
        raise ConfigError("data: give exactly one of data.root (a folder of images) or data.files (a list of images)")
    if labels == "list" and files is None:
        raise ConfigError("data.labels=list needs data.files (a list with a label column); use folders or none")
    if root is not None and not os.path.isdir(root):
        raise ConfigError(f"data.root: {root} is not a folder; give a folder of images or data.files=LIST")


def check_not_empty(listing: Listing) -> None:
    if not listing.samples:
        left = ", ".join(f"{n} {why}" for why, n in sorted(listing.skipped.items())) or "nothing"
        raise ConfigError(
            f"data: no images in {listing.source} (skipped: {left}); "
            f"image extensions are {', '.join(IMAGE_EXTENSIONS)} (any case)"
        )


def say(message: str) -> None:
    print(f"data: {message}", file=sys.stderr, flush=True)


def cache_folder() -> Path:
    """``$CSSL_CACHE``, else ``$XDG_CACHE_HOME/cssl``, else ``~/.cache/cssl``."""
    if os.environ.get("CSSL_CACHE"):
        return Path(os.path.expanduser(os.environ["CSSL_CACHE"]))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cssl"


def index_paths(root: str, index: str) -> list[Path]:
    """Where the index of ``root`` is looked for and written, in order (``index`` = auto or a path)."""
    if index != "auto":
        return [Path(os.path.expanduser(index))]
    key = hashlib.sha1(os.path.realpath(root).encode()).hexdigest()[:16]
    return [Path(root) / INDEX_DIR / "index.json", cache_folder() / "index" / f"{key}.json"]


def _load(path: Path, root: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != INDEX_VERSION or data.get("root") != root:
        return None
    return data


def stale_reason(data: dict, root: str) -> str | None:
    """Why the index ``data`` no longer describes ``root`` (one ``stat`` per folder it walked), or None."""
    for rel, mtime in data["folders"]:
        folder = os.path.join(root, rel) if rel != "." else root
        try:
            now = os.stat(folder).st_mtime_ns
        except OSError:
            return f"folder {folder} is gone"
        if now != mtime:
            return f"folder {folder} changed since the index was made"
    return None


def _write(root: str, index: str, data: dict) -> Path | None:
    text = json.dumps(data, separators=(",", ":"))
    for path in index_paths(root, index):
        try:
            atomic_write_text(path, text)
            return path
        except (OSError, RunError):
            continue
    say(f"could not write the index of {root} ({', '.join(map(str, index_paths(root, index)))}); set CSSL_CACHE")
    return None


def _walk_to_index(root: str, index: str) -> dict:
    if index == "auto" or index == "rebuild":
        try:  # make the hidden index folder before the walk, so that its creation is in the root's time
            (Path(root) / INDEX_DIR).mkdir(exist_ok=True)
        except OSError:
            pass
    paths, skipped, folders = walk(root)
    prefix = _prefix(root)  # every walked path starts with it: slicing is 20x cheaper than os.path.relpath
    return {
        "version": INDEX_VERSION,
        "root": root,
        "count": len(paths),
        "skipped": skipped,
        "folders": [[f[len(prefix) :] or ".", m] for f, m in folders],
        "paths": [p[len(prefix) :] for p in paths],
    }


def _listing(data: dict, root: str, labels: str) -> Listing:
    prefix = _prefix(root)
    paths = [prefix + p for p in data["paths"]]
    return _from_walk(root, labels, paths, data["skipped"])


def build_index(root: str, index: str = "auto") -> dict:
    """The walk of ``root``: read from a fresh index, else walked and written (``index`` as in
    :func:`list_images`; ``off``: walked, nothing written)."""
    if index == "off":
        return _walk_to_index(root, "off")
    if index != "rebuild":
        for path in index_paths(root, index):
            data = _load(path, root)
            if data is None:
                continue
            why = stale_reason(data, root)
            if why is None:
                return data
            say(f"index {path} is stale ({why}); listing {root} again")
            break
    data = _walk_to_index(root, index)
    _write(root, "auto" if index == "rebuild" else index, data)
    return data


def read_index(*, root: str, labels: str = "none", index: str = "auto", wait_s: float = 0.0) -> Listing | None:
    """The listing from the index of ``root``, never walking it: for the processes that are not the first,
    which wait up to ``wait_s`` seconds for the first to write a fresh index (a ``stat`` per folder to check
    it); None when there is none by then."""
    if index == "off":
        return None
    top = os.path.abspath(root)
    deadline = time.monotonic() + wait_s
    while True:
        for path in index_paths(top, "auto" if index == "rebuild" else index):
            data = _load(path, top)
            if data is not None and stale_reason(data, top) is None:
                listing = _listing(data, top, labels)
                check_not_empty(listing)
                return listing
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)


def list_images(
    *, root: str | None = None, files: str | None = None, labels: str = "none", index: str = "auto"
) -> Listing:
    """The images of a folder (``root``) or a file list (``files``), labelled as ``labels`` says.

    ``index`` (``auto|rebuild|off|PATH``) says where a folder's listing is cached (see
    :mod:`cssl.data.listing`); a file list is read directly.

    Raises:
        ConfigError: one line, for a bad request or no images at all.
    """
    check_request(root, files, labels)
    if files is not None:
        listing = _from_files(files, labels)
    else:
        top = os.path.abspath(root)
        listing = _listing(build_index(top, index), top, labels)
    check_not_empty(listing)
    return listing
