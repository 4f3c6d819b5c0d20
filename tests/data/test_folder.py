"""Image folders: bad files skipped and counted (or an error), folder checks before training, and the
pretraining loader whose views are cut from the original images (CPU and device decode)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from cssl.core.errors import ConfigError
from cssl.data import MultiView, ViewAugment, build_datamodule
from cssl.data.folder import BadImageError, FolderViews
from cssl.data.views import ViewSpec
from tests.conftest import QUICK, check_ok, run_cli, run_inprocess
from tests.data import fabricate as F

BAD = ("cat/d.jpg", "zebra/c.jpg")  # truncated JPEGs added to the fabricated train folder (10 files)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fabricated image folder (8 train images: PNG, JPEG, gray, RGBA) plus two truncated JPEGs."""
    root = F.write_imagefolder(tmp_path_factory.mktemp("folder"))
    for name in BAD:
        shutil.copy(root / "train" / "cat" / "b.jpg", root / "train" / name)
        truncate(root / "train" / name)
    return root


def views_set(root: Path, **kwargs) -> FolderViews:
    dm = build_datamodule("imagefolder", root=str(root), batch_size=2, image_size=32, **kwargs)
    dm.check()
    return FolderViews(dm.sets["labelled"].samples, [ViewSpec(16)], **kwargs)


def index_of(dataset: FolderViews, name: str) -> int:
    return next(i for i, (p, _) in enumerate(dataset.samples) if p.endswith(name))


def test_a_truncated_jpeg_is_replaced_by_the_next_image_counted_and_named_once(folder):
    dataset = views_set(folder)
    i = index_of(dataset, BAD[0])  # cat/d.jpg: the next file is dog/a.png
    with pytest.warns(UserWarning, match=r"skipped unreadable image .*cat/d\.jpg") as record:
        views, label, skipped = dataset[i]
    assert len([w for w in record if "cat/d.jpg" in str(w.message)]) == 1
    assert skipped == 1 and label == 1 and views[0].shape == (3, 16, 16)
    assert dataset.samples[i + 1][0].endswith("dog/a.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second encounter counts again but warns no more
        assert dataset[i][2] == 1
        assert dataset[i + 1][2] == 0


def test_with_skip_bad_images_false_a_bad_file_is_an_error_naming_it(folder):
    dataset = views_set(folder, skip_bad_images=False)
    i = index_of(dataset, BAD[1])
    with pytest.raises(BadImageError, match=r"data\.skip_bad_images=false: could not read .*zebra/c\.jpg"):
        dataset[i]
    # through a loader worker the error keeps its type and one line naming the file
    loader = DataLoader(torch.utils.data.Subset(dataset, [i]), batch_size=1, num_workers=1)
    with pytest.raises(BadImageError) as err:
        next(iter(loader))
    assert "\n" not in str(err.value) and str(err.value).startswith("data.skip_bad_images=false")
    assert "zebra/c.jpg" in str(err.value)


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_pretraining_batches_carry_every_view_and_the_skipped_count(folder, decode):
    dm = build_datamodule("imagefolder", root=str(folder), batch_size=5, image_size=32, decode=decode)
    dm.check()
    views = [ViewSpec(32, (0.3, 1.0))] * 2 + [ViewSpec(12, (0.05, 0.3))] * 3
    augment = MultiView([ViewAugment(v.size, crop=False, crop_scale=v.scale) for v in views])
    dm.cut_views(views, augment)
    dm.trainer = SimpleNamespace(training=True)
    total, labels = 0, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for batch in dm.train_dataloader():
            out, y = dm.on_after_batch_transfer(batch, 0)
            assert [tuple(v.shape) for v in out] == [(5, 3, 32, 32)] * 2 + [(5, 3, 12, 12)] * 3
            assert all(v.dtype == torch.float32 for v in out)
            total += int(dm.skipped_images)
            labels.append(y)
    assert total == len(BAD)  # 10 files, 2 full batches: every file once, both bad ones counted
    # cat/d.jpg is replaced by the next file (dog/a.png), zebra/c.jpg, the last, by the first (cat/a.png)
    assert torch.bincount(torch.cat(labels)).tolist() == [4, 4, 2]
    # evaluation batches are untouched: (x, y) of resized, centre-cropped images
    dm.trainer = SimpleNamespace(training=False)
    dm.eval_transform = lambda x: x
    x, y = next(iter(dm.val_dataloader()[1]))
    assert dm.on_after_batch_transfer((x, y), 1)[0].shape[-1] == 37


def test_device_decode_replaces_a_file_no_decoder_reads_by_another_of_the_batch(folder, tmp_path):
    # a file PIL can open (its header is fine) but nobody can decode reaches the device decoder
    from cssl.data.folder import replace_bad

    views = [torch.arange(4).view(4, 1, 1, 1).expand(4, 3, 2, 2).clone()]
    labels = torch.tensor([0, 1, 2, 3])
    bad = torch.tensor([False, True, False, True])
    with pytest.warns(UserWarning, match="b.jpg"):
        replace_bad(views, labels, bad, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], skip=True)
    assert labels.tolist() == [0, 2, 2, 0] and views[0][:, 0, 0, 0].tolist() == [0, 2, 2, 0]
    with pytest.raises(BadImageError, match="b.jpg"):
        replace_bad(views, labels, bad, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], skip=False)


# -- folder checks before training ------------------------------------------------------------------


def broken(root: Path, case: str) -> Path:
    F.write_imagefolder(root)
    train = root / "train"
    if case == "empty class folder":
        for path in (train / "dog").iterdir():
            path.unlink()
    elif case == "no images":
        for path in train.rglob("*.*"):
            path.unlink()
    elif case == "non-image file":
        (train / "zebra" / "notes.txt").write_text("labels were checked by hand")
    elif case == "not an image inside":
        (train / "cat" / "0.jpg").write_text("a text file named like an image")
    return root


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty class folder", r"held-out set .*val has classes the training labels lack \(dog\)"),
        ("no images", r"data: no images in .*train"),
    ],
)
def test_bad_folders_are_one_line_errors_before_training(case, message, tmp_path):
    import re

    root = broken(tmp_path / "data", case)
    dm = build_datamodule("imagefolder", root=str(root), batch_size=2, image_size=32)
    with pytest.raises(ConfigError, match=message) as err:
        dm.check()
    assert "\n" not in str(err.value)
    if case == "empty class folder":  # as the CLI reports it: exit status 2, one line, nothing trained
        code, stderr = run_inprocess("train", ["data=imagefolder", f"data.root={root}", f"run_dir={tmp_path / 'run'}"])
        assert code == 2 and len(stderr.strip().splitlines()) == 1 and re.search(message, stderr)
        assert not (tmp_path / "run" / "summary.json").exists()


def test_other_files_among_the_classes_are_skipped_and_counted(tmp_path, capsys):
    # a README or sidecar file is not an image: left out and counted in the start line, not an error
    root = broken(tmp_path / "data", "non-image file")
    files = [p for p in (root / "train").rglob("*") if p.is_file() and p.name != "notes.txt"]
    dm = build_datamodule("imagefolder", root=str(root), batch_size=2, image_size=32)
    dm.check()
    listed = {path for path, _ in dm.listing.samples}
    assert dm.listing.skipped.get("not an image") == 1 and not any(p.endswith("notes.txt") for p in listed)
    assert len(listed) == len(files)


def test_a_file_named_like_an_image_is_skipped_when_read(tmp_path):
    # not an image inside: listed by its name, replaced by the next readable image when read, and counted
    root = broken(tmp_path / "data", "not an image inside")
    dm = build_datamodule("imagefolder", root=str(root), batch_size=2, image_size=32)
    dm.check()
    views = FolderViews(dm.listing.samples, [ViewSpec(16, (0.5, 1.0))], skip_bad_images=True)
    index = [p for p, _ in dm.listing.samples].index(str(root / "train" / "cat" / "0.jpg"))
    with pytest.warns(UserWarning, match="0.jpg"):
        _, _, skipped = views[index]
    assert skipped == 1


# -- through the CLI ---------------------------------------------------------------------------------


def cli_args(root: Path, run_dir: Path) -> list[str]:
    return [
        *QUICK,
        "data=imagefolder",
        f"data.root={root}",
        "data.image_size=32",
        "data.batch_size=5",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "diagnostics.every_n_steps=0",
        f"run_dir={run_dir}",
    ]


@pytest.mark.slow
def test_skipped_images_reach_the_logged_metrics_in_a_cli_run(folder, tmp_path):
    check_ok(
        run_cli("train.py", *cli_args(folder, tmp_path / "run"), "data.multicrop={sizes: [16], scales: [[0.05, 0.3]]}")
    )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["global_step"] == 2
    assert summary["metrics"]["data/skipped_images"] == len(BAD)


def test_skip_bad_images_false_stops_the_run_naming_the_file(folder, tmp_path):
    code, stderr = run_inprocess("train", [*cli_args(folder, tmp_path / "run"), "data.skip_bad_images=false"])
    lines = stderr.strip().splitlines()  # the listing's one line (data: N images ...), then the error's
    assert code == 2 and lines[-1].startswith("error: ") and [line[:5] for line in lines] == ["data:", "error"]
    assert "data.skip_bad_images=false: could not read" in stderr and ("cat/d.jpg" in stderr or "zebra/c.jpg" in stderr)


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_crop_draws_follow_the_dealt_seed_and_survive_a_mid_epoch_resume(tmp_path, decode):
    from PIL import Image

    from cssl.data.resumable import ResumableSampler, draw_seed, resumed_sampler

    noise = torch.randint(0, 256, (48, 80, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    samples = []
    for i in range(8):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(noise.roll(7 * i, dims=1).numpy()).save(path, quality=95)
        samples.append((str(path), i % 2))
    dataset = FolderViews(samples, [ViewSpec(16, (0.08, 1.0)), ViewSpec(8, (0.05, 0.3))], decode=decode)

    def item(key):
        views = dataset[key][0]
        return views["boxes"] if decode == "gpu" else torch.cat([v.flatten() for v in views])

    torch.manual_seed(0)
    first = item((3, 1234))
    torch.manual_seed(99)  # the worker's global state does not matter
    assert torch.equal(item((3, 1234)), first)
    assert any(not torch.equal(item((3, s)), first) for s in (1, 2, 3))  # the seed does
    # the sampler deals (index, seed) pairs to such a dataset; a resumed epoch deals the same tail
    full = resumed_sampler(dataset, {}, batch_size=2, num_replicas=1, rank=0, seed=5)
    assert isinstance(full, ResumableSampler) and full.seeded_draws
    full.set_epoch(2)
    pairs = list(full)
    assert all(seed == draw_seed(5, 2, i) for i, seed in pairs)
    resumed = resumed_sampler(
        dataset, {"epoch": 2, "batches": 2, "processes": 1}, batch_size=2, num_replicas=1, rank=0, seed=5
    )
    assert list(resumed) == pairs[4:]
    full.set_epoch(3)
    assert [s for _, s in full] != [draw_seed(5, 2, i) for i, _ in full]  # a new epoch, new draws
