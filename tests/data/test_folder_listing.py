"""Which images data=folder reads (cssl.data.listing): flat and nested folders, file lists and CSV, junk
files, symbolic-link loops, labels none/folders/list, and the cached index (reuse, staleness, a read-only
root, the processes that are not first never walking)."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest

from cssl.core.errors import ConfigError
from cssl.data import listing as L
from cssl.data.listing import list_images, read_index


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Nested: a/1.jpg a/2.PNG a/deep/3.jpeg b/4.webp, plus top.jpg, junk and hidden files."""
    root = tmp_path / "tree"
    for rel in ("a/1.jpg", "a/2.PNG", "a/deep/3.jpeg", "b/4.webp", "top.jpg"):
        touch(root / rel)
    for rel in ("a/notes.txt", "b/meta.json", "README"):  # not images
        touch(root / rel)
    for rel in (".hidden.jpg", "a/.thumb.jpg", ".git/x.jpg"):  # hidden
        touch(root / rel)
    return root


def names(listing: L.Listing, root: Path) -> list[str]:
    return [os.path.relpath(p, root) for p, _ in listing.samples]


def test_a_nested_folder_lists_images_at_any_depth_sorted_and_counts_what_it_skips(tree):
    listing = list_images(root=str(tree), index="off")
    assert names(listing, tree) == ["a/1.jpg", "a/2.PNG", "a/deep/3.jpeg", "b/4.webp", "top.jpg"]
    assert all(y == -1 for _, y in listing.samples) and listing.classes == []
    assert listing.skipped == {"not an image": 3, "hidden": 3}
    assert all(os.path.isabs(p) for p, _ in listing.samples)
    assert listing.summary().count("\n") == 0 and "3 not an image" in listing.summary()


def test_a_flat_folder(tmp_path):
    for i in range(5):
        touch(tmp_path / f"img{i}.JPG")
    listing = list_images(root=str(tmp_path), index="off")
    assert len(listing.samples) == 5 and listing.skipped == {}


def test_labels_from_first_level_folders(tree):
    listing = list_images(root=str(tree), labels="folders", index="off")
    assert listing.classes == ["a", "b"]
    assert [(os.path.relpath(p, tree), y) for p, y in listing.samples] == [
        ("a/1.jpg", 0),
        ("a/2.PNG", 0),
        ("a/deep/3.jpeg", 0),
        ("b/4.webp", 1),
    ]
    assert listing.skipped["not in a class folder"] == 1  # top.jpg


def test_a_symlink_loop_is_followed_once(tmp_path):
    root = tmp_path / "r"
    touch(root / "x/1.jpg")
    os.symlink(root, root / "x" / "back")  # a loop to the root
    os.symlink(root / "x", root / "alias")  # the same folder twice
    listing = list_images(root=str(root), index="off")
    assert names(listing, root) == ["x/1.jpg"] or names(listing, root) == ["alias/1.jpg"]
    assert listing.skipped == {"folder seen before (link)": 2}


def test_an_empty_folder_or_only_junk_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="no images in") as err:
        list_images(root=str(tmp_path), index="off")
    assert "\n" not in str(err.value)
    touch(tmp_path / "notes.txt")
    with pytest.raises(ConfigError, match=r"skipped: 1 not an image"):
        list_images(root=str(tmp_path), index="off")


def test_bad_requests_are_one_line_errors(tmp_path):
    for kwargs, match in (
        ({}, "exactly one of"),
        ({"root": str(tmp_path / "nope")}, "is not a folder"),
        ({"root": str(tmp_path), "labels": "list"}, "needs data.files"),
        ({"root": str(tmp_path), "labels": "yes"}, "choose one of"),
        ({"files": str(tmp_path / "missing.txt")}, "is not a file"),
    ):
        with pytest.raises(ConfigError, match=match):
            list_images(index="off", **kwargs)


def test_a_text_list_relative_and_absolute_with_some_labels(tmp_path):
    images = tmp_path / "imgs"
    for rel in ("c/1.jpg", "c/2.jpg", "d/3.png"):
        touch(images / rel)
    lst = tmp_path / "list.txt"
    lst.write_text(f"# comment\nimgs/c/1.jpg\tcat\n\nimgs/c/2.jpg\n{images / 'd/3.png'}\tdog\nimgs/notes.txt\n")
    listing = list_images(files=str(lst), labels="list")
    assert listing.classes == ["cat", "dog"]
    assert [(os.path.relpath(p, tmp_path), y) for p, y in listing.samples] == [
        ("imgs/c/1.jpg", 0),
        ("imgs/c/2.jpg", -1),
        ("imgs/d/3.png", 1),
    ]
    assert listing.skipped == {"not an image": 1}
    assert [y for _, y in list_images(files=str(lst)).samples] == [-1, -1, -1]
    by_folder = list_images(files=str(lst), labels="folders")
    assert by_folder.classes == ["c", "d"] and [y for _, y in by_folder.samples] == [0, 0, 1]


@pytest.mark.parametrize("header", [True, False])
def test_a_csv_list_with_or_without_header(tmp_path, header):
    lst = tmp_path / "sub" / "list.csv"
    lst.parent.mkdir()
    rows = ["../a.jpg,x", "../b.jpg,y", "../c.jpg,"]
    lst.write_text("\n".join((["path,label"] if header else []) + rows) + "\n")
    listing = list_images(files=str(lst), labels="list")
    assert [(Path(p).name, y) for p, y in listing.samples] == [("a.jpg", 0), ("b.jpg", 1), ("c.jpg", -1)]
    assert listing.classes == ["x", "y"] and Path(listing.samples[0][0]) == tmp_path / "a.jpg"


# -- the cached index --------------------------------------------------------------------------------------
def count_walks(monkeypatch) -> list[str]:
    walks: list[str] = []
    real = L.walk

    def counted(root: str):
        walks.append(root)
        return real(root)

    monkeypatch.setattr(L, "walk", counted)
    return walks


def test_the_index_is_written_under_the_root_and_reused(tree, monkeypatch):
    walks = count_walks(monkeypatch)
    first = list_images(root=str(tree))
    assert (tree / ".cssl" / "index.json").is_file() and len(walks) == 1
    data = json.loads((tree / ".cssl" / "index.json").read_text())
    assert data["root"] == str(tree) and data["count"] == 5
    again = list_images(root=str(tree), labels="folders")
    assert len(walks) == 1  # read, not walked
    assert again.samples == list_images(root=str(tree), labels="folders", index="off").samples
    assert list_images(root=str(tree)) == first
    assert "hidden" in first.skipped and first.skipped["hidden"] == 3  # the index folder is not counted
    list_images(root=str(tree), index="rebuild")
    assert len(walks) == 3  # index=off above walked once, rebuild once


@pytest.mark.parametrize("change", ["add", "remove", "rename folder", "add folder"])
def test_a_changed_tree_makes_the_index_stale_and_it_is_rebuilt_with_one_line(tree, change, capsys):
    list_images(root=str(tree))
    time.sleep(0.02)
    if change == "add":
        touch(tree / "a" / "deep" / "new.jpg")
    elif change == "remove":
        (tree / "b" / "4.webp").unlink()
    elif change == "rename folder":
        (tree / "a" / "deep").rename(tree / "a" / "deeper")
    else:
        touch(tree / "c" / "5.jpg")
    capsys.readouterr()
    listing = list_images(root=str(tree))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is stale" in err and "listing" in err
    assert listing.samples == list_images(root=str(tree), index="off").samples


def test_a_read_only_root_falls_back_to_the_cache_folder(tree, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CSSL_CACHE", str(cache))
    real_write = L.atomic_write_text

    def read_only_root(path, text, **kwargs):  # a read-only file system under the root (also for root users)
        if str(path).startswith(str(tree)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_write(path, text, **kwargs)

    monkeypatch.setattr(L, "atomic_write_text", read_only_root)
    walks = count_walks(monkeypatch)
    listing = list_images(root=str(tree))
    written = list((cache / "index").glob("*.json"))
    assert len(written) == 1 and not (tree / ".cssl" / "index.json").exists()
    assert list_images(root=str(tree)) == listing and len(walks) == 1  # found in the cache, fresh


def test_an_explicit_index_path(tree, tmp_path, monkeypatch):
    walks = count_walks(monkeypatch)
    path = tmp_path / "idx" / "tree.json"
    list_images(root=str(tree), index=str(path))
    assert path.is_file() and not (tree / ".cssl").exists()
    list_images(root=str(tree), index=str(path))
    assert len(walks) == 1
    other = tmp_path / "other"
    touch(other / "1.jpg")
    list_images(root=str(other), index=str(path))  # an index made for another root is not used
    assert len(walks) == 2


def test_read_index_never_walks_and_waits_for_a_fresh_index(tree, monkeypatch):
    monkeypatch.setattr(L, "walk", lambda root: pytest.fail("walked"))
    assert read_index(root=str(tree)) is None  # no index yet, no wait
    monkeypatch.undo()
    list_images(root=str(tree))
    monkeypatch.setattr(L, "walk", lambda root: pytest.fail("walked"))
    assert read_index(root=str(tree), labels="folders").classes == ["a", "b"]
    time.sleep(0.02)
    touch(tree / "b" / "late.jpg")
    assert read_index(root=str(tree), wait_s=0.3) is None  # stale: not used
