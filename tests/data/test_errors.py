"""Missing, refused or unreadable data and bad loader options become one-line ConfigErrors."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request

import pytest

from cssl.core.errors import ConfigError
from cssl.data import build_datamodule
from tests.data import fabricate as F

DOWNLOADABLE = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "stl10": "stl10_binary"}


def one_line_error(dm, *, method: str = "check") -> str:
    with pytest.raises(ConfigError) as err:
        getattr(dm, method)()
    message = str(err.value)
    assert message and "\n" not in message
    return message


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10", "imagefolder"])
def test_an_empty_root_names_data_root_the_path_and_the_fix(name, tmp_path):
    dm = build_datamodule(name, root=str(tmp_path), batch_size=4, download=False, verify_checksums=False)
    message = one_line_error(dm)
    assert message.startswith("data.root:") and str(tmp_path) in message and "set data.root" in message
    if name in DOWNLOADABLE:
        assert f"{tmp_path / DOWNLOADABLE[name]} does not exist" in message and "data.download=true" in message


@pytest.mark.parametrize("name", ["cifar10", "stl10"])
def test_a_partly_missing_data_set_names_the_missing_files(name, data_root, tmp_path):
    folder = DOWNLOADABLE[name]
    shutil.copytree(data_root / folder, tmp_path / folder)
    victim = "data_batch_3" if name == "cifar10" else "unlabeled_X.bin"
    (tmp_path / folder / victim).unlink()
    dm = build_datamodule(name, root=str(tmp_path), batch_size=4, verify_checksums=False)
    message = one_line_error(dm)
    assert message.startswith("data.root:") and f"lacks {victim};" in message


@pytest.mark.parametrize("name", sorted(DOWNLOADABLE))
def test_fabricated_files_are_refused_when_checksums_are_verified(name, data_root):
    dm = build_datamodule(name, root=str(data_root), batch_size=4, verify_checksums=True)
    message = one_line_error(dm)
    assert message.startswith("data.verify_checksums:") and "MD5" in message
    assert str(data_root / DOWNLOADABLE[name]) in message and "data.verify_checksums=false" in message


def test_an_unreadable_file_is_a_config_error(data_root, tmp_path):
    shutil.copytree(data_root / "cifar-10-batches-py", tmp_path / "cifar-10-batches-py")
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:500])  # truncated
    message = one_line_error(build_datamodule("cifar10", root=str(tmp_path), batch_size=4, verify_checksums=False))
    assert message.startswith("data.root: could not read cifar10") and str(tmp_path) in message


def test_labels_outside_the_class_range_are_refused(data_root, tmp_path):
    shutil.copytree(data_root / "stl10_binary", tmp_path / "stl10_binary")
    (tmp_path / "stl10_binary" / "test_y.bin").write_bytes(bytes([0] * 10))  # 0 is not a 1-based label
    message = one_line_error(build_datamodule("stl10", root=str(tmp_path), batch_size=4, verify_checksums=False))
    assert message.startswith("data.root: stl10 labels") and "[0, 10)" in message


@pytest.mark.parametrize("name", ["digits", "cifar10"])
def test_a_batch_larger_than_the_training_set_is_a_config_error(name, data_root):
    kwargs = {} if name == "digits" else {"root": str(data_root), "verify_checksums": False}
    dm = build_datamodule(name, batch_size=2000, **kwargs)
    message = one_line_error(dm)
    assert "data.batch_size=2000" in message and "lower data.batch_size" in message
    assert "data.batch_size=2000" in one_line_error(dm, method="train_dataloader")


@pytest.mark.parametrize("bad", [1, 0, -4, 2.5, 8.0, True, "8", None])
def test_batch_size_must_be_an_integer_of_at_least_two(bad):
    with pytest.raises(ConfigError, match=r"^data\.batch_size must be an integer >= 2"):
        build_datamodule("digits", batch_size=bad)


@pytest.mark.parametrize(
    ("key", "value"), [("num_workers", -1), ("num_workers", True), ("image_size", 4), ("eval_batch_size", 0)]
)
def test_other_loader_options_are_validated(key, value):
    with pytest.raises(ConfigError, match=rf"^data\.{key} must be"):
        build_datamodule("digits", batch_size=8, **{key: value})


def test_unknown_data_set_lists_the_choices():
    with pytest.raises(
        ConfigError, match="choose data= one of cifar10, cifar100, digits, folder, imagefolder, lab, shards, stl10"
    ):
        build_datamodule("mnist", batch_size=8)


# -- download without a network ------------------------------------------------------------------------


def _offline(*args, **kwargs):
    raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))


@pytest.mark.parametrize("name", sorted(DOWNLOADABLE))
@pytest.mark.parametrize("hook", ["check", "prepare_data"])
def test_download_without_network_is_a_one_line_config_error(name, hook, tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", _offline)  # what torchvision's download meets offline
    dm = build_datamodule(name, root=str(tmp_path), batch_size=4, download=True)
    message = one_line_error(dm, method=hook)
    assert message.startswith(f"data.download: could not download {name}")
    assert "Temporary failure in name resolution" in message and str(tmp_path) in message
    assert "data.root" in message


def test_a_failing_download_function_is_a_config_error(tmp_path, monkeypatch):
    from torchvision.datasets import utils as tv_utils

    def fail(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fail)
    message = one_line_error(build_datamodule("stl10", root=str(tmp_path), batch_size=4, download=True))
    assert message.startswith("data.download:") and "Network is unreachable" in message


def test_download_is_skipped_when_the_files_are_there(data_root, monkeypatch):
    from torchvision.datasets import utils as tv_utils

    def fail(*args, **kwargs):
        raise AssertionError("downloaded although the files are present")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fail)
    dm = build_datamodule("cifar100", root=str(data_root), batch_size=4, download=True, verify_checksums=False)
    dm.prepare_data()
    dm.check()
    assert len(dm.sets["val"]) == 20


def test_fabricated_pickles_have_the_byte_keys_of_the_official_files(data_root):
    import pickle

    with open(data_root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    assert set(entry) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert entry[b"data"].dtype.name == "uint8" and entry[b"data"].shape == (7, 3072)
    # row-major planes: red row 1, column 6 is byte 1 * 32 + 6
    assert entry[b"data"][0, 1 * 32 + 6] == F.HI[3] and entry[b"data"][0, 6 * 32 + 1] == F.LO[3]
    with open(data_root / "cifar-100-python" / "meta", "rb") as f:
        meta = pickle.load(f, encoding="bytes")
    assert len(meta[b"fine_label_names"]) == 100 and isinstance(meta[b"fine_label_names"][0], bytes)
    raw = (data_root / "stl10_binary" / "train_X.bin").read_bytes()
    assert len(raw) == 20 * 3 * 96 * 96 and raw[6 * 96 + 1] == F.HI[3]  # column-major: col 6, row 1
