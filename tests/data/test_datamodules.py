"""Every registered data module on fabricated files in the official formats: sizes, labels, pixels, loaders."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import SequentialSampler

from cssl.core.errors import ConfigError
from cssl.data import DATASETS, EvalTransform, MultiView, ViewAugment, build_datamodule
from cssl.data.resumable import ResumableSampler
from tests.data import fabricate as F

NAMES = sorted(DATASETS)
SPLITS = ("pretrain", "labelled", "val")
_BUILT: dict[str, object] = {}


def built(name: str, specs: dict) -> object:
    """One loaded module per data set for the read-only tests."""
    if name not in _BUILT:
        spec = specs[name]
        dm = build_datamodule(name, batch_size=spec.batch_size, **spec.kwargs)
        dm.check()
        _BUILT[name] = dm
    return _BUILT[name]


def all_items(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.as_tensor([int(y) for y in labels])


def test_every_registered_data_set_has_a_fabricated_spec(specs):
    assert set(specs) == set(DATASETS)


@pytest.mark.parametrize("name", NAMES)
def test_sets_have_the_right_sizes_labels_and_image_layout(name, specs):
    spec, dm = specs[name], built(name, specs)
    assert dm.num_classes == spec.num_classes
    for split in SPLITS:
        images, labels = all_items(dm.sets[split])
        assert len(images) == spec.sizes[split], split
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, spec.side, spec.side), split
        low = -1 if (name == "stl10" and split == "pretrain") else 0
        assert labels.min() >= low and labels.max() < spec.num_classes, split
        if split != "pretrain" or name != "stl10":
            assert labels.min() >= 0


@pytest.mark.parametrize("name", [n for n in NAMES if n in ("cifar10", "cifar100", "stl10")])
def test_decoded_images_and_labels_are_exactly_the_fabricated_ones(name, specs):
    spec, dm = specs[name], built(name, specs)
    for split in SPLITS:
        images, labels = all_items(dm.sets[split])
        want_images, want_labels = spec.expected[split]
        assert torch.equal(images, torch.from_numpy(want_images)), split
        assert torch.equal(labels, torch.from_numpy(np.asarray(want_labels)).long()), split
        # the planted asymmetric pattern, read in (C, H, W): a transposed or channel-swapped decoder fails here
        assert (images[:, 0, 1, 6] == 250).all() and (images[:, 0, 6, 1] == 5).all()


def test_cifar10_batches_are_concatenated_in_file_order(specs):
    images, _ = all_items(built("cifar10", specs).sets["labelled"])
    # channel 2 pixel (0, 0) holds the index within each batch file: 7, 7, 6, 6, 6 images
    want = torch.cat([torch.arange(n) for n in (7, 7, 6, 6, 6)])
    assert torch.equal(images[:, 2, 0, 0].long(), want)


def test_stl10_pretraining_set_is_train_plus_unlabeled_and_evaluation_is_train_and_test(specs):
    dm = built("stl10", specs)
    pre_images, pre_labels = all_items(dm.sets["pretrain"])
    lab_images, lab_labels = all_items(dm.sets["labelled"])
    assert torch.equal(pre_images[:20], lab_images) and torch.equal(pre_labels[:20], lab_labels)
    assert (pre_labels[20:] == -1).all() and (lab_labels >= 0).all()
    assert torch.equal(torch.bincount(lab_labels), torch.full((10,), 2))  # 1..10 in the file -> 0..9
    # linear evaluation trains on the labelled split only
    linear = build_datamodule("stl10", batch_size=4, train_split="labelled", **specs["stl10"].kwargs)
    linear.check()
    assert len(linear.sets["pretrain"]) == 20 and len(linear.sets["val"]) == 10


def test_imagefolder_decodes_png_jpeg_gray_and_rgba_to_rgb_of_one_size(specs):
    dm = built("imagefolder", specs)
    train, val = dm.sets["labelled"], dm.sets["val"]
    assert train.classes == val.classes == ["cat", "dog", "zebra"]
    by_file = {p.split("/")[-2] + "/" + p.split("/")[-1]: i for i, (p, _) in enumerate(train.samples)}

    def pixels(key: str) -> torch.Tensor:
        image, label = train[by_file[key]]
        assert label == train.classes.index(key.split("/")[0])
        return image.long()

    cat = torch.tensor(F.COLORS["cat"]).view(3, 1, 1)
    assert (pixels("cat/a.png") == cat).all()  # PNG: lossless
    assert (pixels("cat/b.jpg") - cat).abs().max() <= 8  # JPEG: close
    assert (pixels("dog/a.png") == torch.tensor(F.COLORS["dog"]).view(3, 1, 1)).all()  # RGBA -> RGB
    gray = pixels("zebra/a.png")
    assert (gray == 128).all()  # L -> three equal channels
    split = pixels("cat/c.png")  # top half red, bottom half blue: rows are the first spatial axis
    assert (split[:, :10] == torch.tensor(F.COLOR_TOP).view(3, 1, 1)).all()
    assert (split[:, -10:] == torch.tensor(F.COLOR_BOTTOM).view(3, 1, 1)).all()


def test_imagefolder_train_and_val_classes_must_agree(tmp_path):
    F.write_imagefolder(tmp_path, val_classes=("cat", "dog"))
    dm = build_datamodule("imagefolder", root=str(tmp_path), batch_size=2, image_size=32)
    with pytest.raises(ConfigError, match=r"data\.val_dir.*only in train: \['zebra'\]") as err:
        dm.check()
    assert "\n" not in str(err.value)


def test_imagefolder_separate_train_and_val_roots(data_root):
    dm = build_datamodule(
        "imagefolder",
        root=str(data_root),
        train_dir=str(data_root / "images" / "train"),
        val_dir=str(data_root / "images" / "val"),
        batch_size=2,
        image_size=32,
    )
    dm.check()
    assert len(dm.sets["labelled"]) == 8 and len(dm.sets["val"]) == 4 and dm.num_classes == 3


def test_digits_split_is_fixed_stratified_and_deterministic():
    from sklearn.datasets import load_digits

    targets = torch.from_numpy(load_digits().target)
    a, b = build_datamodule("digits", batch_size=8), build_datamodule("digits", batch_size=8)
    a.check(), b.check()
    ta, va = all_items(a.sets["labelled"]), all_items(a.sets["val"])
    tb, vb = all_items(b.sets["labelled"]), all_items(b.sets["val"])
    assert len(ta[1]) == 1437 and len(va[1]) == 360
    assert torch.equal(va[0], vb[0]) and torch.equal(va[1], vb[1]) and torch.equal(ta[0], tb[0])
    per_class = torch.bincount(targets, minlength=10)
    assert torch.equal(torch.bincount(ta[1], minlength=10) + torch.bincount(va[1], minlength=10), per_class)
    assert ((torch.bincount(va[1], minlength=10) - 0.2 * per_class).abs() <= 1).all()
    assert torch.equal(va[0][:, 0], va[0][:, 1]) and torch.equal(va[0][:, 0], va[0][:, 2])  # gray as RGB


# -- loaders -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_pretraining_loader_shuffles_and_drops_the_last_incomplete_batch(name, specs):
    spec, dm = specs[name], built(name, specs)
    n, bs = spec.sizes["pretrain"], spec.batch_size
    assert n % bs != 0
    loader = dm.train_dataloader()
    assert loader.drop_last and isinstance(loader.sampler, ResumableSampler) and loader.batch_size == bs
    epochs = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)  # as Lightning does: the order is a function of (seed, epoch)
        epochs.append(torch.cat([x for x, _ in loader]))
    ordered, _ = all_items(dm.sets["pretrain"])
    for seen in epochs:
        assert len(seen) == (n // bs) * bs
        assert not torch.equal(seen, ordered[: len(seen)])
    assert not torch.equal(epochs[0], epochs[1])


@pytest.mark.parametrize("name", NAMES)
def test_evaluation_loaders_keep_order_and_every_image(name, specs):
    spec, dm = specs[name], built(name, specs)
    loaders = dm.val_dataloader()
    assert len(loaders) == 2
    for loader, split in zip(loaders, ("labelled", "val"), strict=True):
        assert not loader.drop_last and isinstance(loader.sampler, SequentialSampler)
        images = torch.cat([x for x, _ in loader])
        labels = torch.cat([y for _, y in loader])
        want_images, want_labels = all_items(dm.sets[split])
        assert len(images) == spec.sizes[split]
        assert torch.equal(images, want_images) and torch.equal(labels, want_labels)


def test_bank_limit_caps_the_knn_bank(specs):
    dm = build_datamodule("cifar10", batch_size=4, bank_limit=10, **specs["cifar10"].kwargs)
    dm.check()
    assert len(dm.val_dataloader()[0].dataset) == 10 and len(dm.val_dataloader()[1].dataset) == 16


@pytest.mark.parametrize("name", NAMES)
def test_on_after_batch_transfer_makes_views_in_training_and_the_eval_transform_otherwise(name, specs):
    spec = specs[name]
    dm = build_datamodule(name, batch_size=spec.batch_size, **spec.kwargs)
    dm.check()
    s = spec.image_size
    dm.train_transform = MultiView([ViewAugment(s, mean=dm.mean, std=dm.std) for _ in range(2)])
    dm.eval_transform = EvalTransform(s, center_crop=dm.center_crop_eval, mean=dm.mean, std=dm.std)
    x, y = next(iter(dm.train_dataloader()))
    mean, std = torch.tensor(dm.mean).view(1, 3, 1, 1), torch.tensor(dm.std).view(1, 3, 1, 1)

    dm.trainer = SimpleNamespace(training=True)
    views, y_out = dm.on_after_batch_transfer((x, y), 0)
    assert isinstance(views, list) and len(views) == 2 and torch.equal(y_out, y)
    for v in views:
        assert v.dtype == torch.float32 and v.shape == (len(x), 3, s, s)
        unnormalised = v * std + mean
        assert unnormalised.min() >= -1e-5 and unnormalised.max() <= 1 + 1e-5
    assert not torch.allclose(views[0], views[1])

    # eval: crop to the centre when the decoded side is larger (imagefolder), then (x / 255 - mean) / std
    off = (spec.side - s) // 2
    want = (x[..., off : off + s, off : off + s].float() / 255 - mean) / std
    for trainer in (SimpleNamespace(training=False), None):
        dm.trainer = trainer
        out, _ = dm.on_after_batch_transfer((x, y), 0)
        assert isinstance(out, torch.Tensor) and torch.allclose(out, want, atol=1e-5)
