"""Linear-evaluation protocols (configs/protocol/): each runs end to end on digits and reports the last and
the best epoch; their values are the official scripts'."""

import json

import pytest

from cssl.eval.probe import EpochResult, last_and_best
from tests.conftest import QUICK, TinyNet, compose, run_inprocess, train_inprocess

FAST = (
    "logger=none",
    "trainer.progress_bar=false",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "data.batch_size=32",
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("pretrain")
    train_inprocess(*QUICK, "trainer.max_steps=2", f"run_dir={run}")
    return run


@pytest.mark.parametrize("protocol", ["default", "moco", "adco", "dcl_hcl"])
def test_every_protocol_runs_and_reports_last_and_best(protocol, checkpoint, tmp_path):
    code, err = run_inprocess(
        "linear_eval", [f"ckpt={checkpoint}", f"protocol={protocol}", *FAST, f"run_dir={tmp_path}"]
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["protocol"] == protocol and summary["epochs"] == 2
    for key in ("top1_last", "top5_last", "top1_best", "top5_best"):
        assert 0 <= summary[key] <= 1
    assert summary["top1"] == summary["top1_last"] <= summary["top1_best"]
    assert summary["top1_last"] <= summary["top5_last"] and summary["best_epoch"] in (1, 2)


def test_last_and_best_of_a_fabricated_sequence():
    accs = [0.30, 0.55, 0.52, 0.55, 0.50]
    history = [EpochResult(e + 1, 10 * (e + 1), a, a + 0.2) for e, a in enumerate(accs)]
    result = last_and_best(history)
    assert result["top1_last"] == 0.50 and result["top5_last"] == pytest.approx(0.70)
    assert result["top1_best"] == 0.55 and result["best_epoch"] == 2  # the first of two equal bests
    assert result["top5_best"] == pytest.approx(0.75)


def _composed(protocol: str, *overrides: str):
    return compose("linear_eval", [f"protocol={protocol}", *overrides])


def test_moco_protocol_is_main_lincls():
    cfg = _composed("moco")
    opt = cfg.optimizer
    assert (opt.name, opt.lr, opt.momentum, opt.weight_decay) == ("sgd", 30.0, 0.9, 0.0)
    assert (opt.schedule, list(opt.milestones), opt.gamma, opt.schedule_interval) == ("steps", [60, 80], 0.1, "epoch")
    assert cfg.trainer.max_epochs == 100 and cfg.trainer.check_val_every_n_epoch == 1
    assert cfg.data.batch_size == 256 and not cfg.feature_norm and cfg.backbone_bn == "eval"
    assert list(cfg.augment.crop_scale) == [0.08, 1.0] and cfg.augment.hflip and cfg.init_std == 0.01


def test_adco_protocol_is_lincls():
    cfg = _composed("adco")
    opt = cfg.optimizer
    assert (opt.lr, opt.schedule, opt.schedule_interval) == (10.0, "cosine", "epoch")
    assert opt.lr * opt.min_lr_ratio == pytest.approx(0.01) and opt.warmup_epochs == 0
    assert cfg.trainer.max_epochs == 100 and cfg.backbone_bn == "eval" and not cfg.feature_norm


def test_dcl_hcl_protocol_is_linear_py():
    cfg = _composed("dcl_hcl", "data=stl10")
    opt = cfg.optimizer
    assert (opt.name, opt.lr, opt.weight_decay, opt.scale_lr, list(opt.milestones)) == ("adam", 1e-3, 1e-6, False, [])
    assert cfg.data.batch_size == 512 and cfg.trainer.max_epochs == 100
    assert cfg.backbone_bn == "train" and cfg.train_augment == "pretrain" and not cfg.feature_norm
    from cssl.runtime import run as runs

    data = runs.build_data(cfg, train_split="labelled", train_transform=None)
    assert data.image_size == data.eval_image_size == 96  # STL-10 test images at their native size


def test_backbone_bn_train_re_estimates_statistics_and_keeps_weights():
    import torch

    from cssl.eval.probe import LinearProbe
    from cssl.models.optim import OptimSettings

    torch.manual_seed(0)
    net = TinyNet(4, relu=False, padding=0)  # net[1]: the BN layer
    x = torch.randn(8, 3, 6, 6) * 3 + 1
    for mode, moves in (("train", True), ("eval", False)):
        probe = LinearProbe(net, num_classes=3, batch_size=8, optim=OptimSettings(), backbone_bn=mode).train()
        before = probe.backbone[1].running_mean.clone()
        probe(x)
        assert probe.backbone[1].training is moves
        assert (not torch.equal(before, probe.backbone[1].running_mean)) is moves
        assert not any(p.requires_grad for p in probe.backbone.parameters())
        probe.eval()
        assert not probe.backbone[1].training


@pytest.mark.parametrize(
    "args, word",
    [
        (("optimizer.schedule_interval=batch",), "optimizer.schedule_interval"),
        (("backbone_bn=frozen",), "backbone_bn"),
        (("train_augment=strong",), "train_augment"),
    ],
)
def test_bad_values_are_one_line_errors(args, word, tmp_path):
    code, err = run_inprocess("linear_eval", ["ckpt=/nonexistent", *args, "logger=none", f"run_dir={tmp_path}"])
    assert code == 2 and word in err and len(err.strip().splitlines()) == 1


def test_an_unknown_protocol_is_a_one_line_error(capsys):
    from pathlib import Path

    from cssl.runtime import cli

    with pytest.raises(SystemExit) as exc:
        cli.check_group_overrides(["protocol=supervised"], Path(__file__).resolve().parents[1] / "configs")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "unknown protocol 'supervised'" in err and "dcl_hcl" in err
    assert len(err.strip().splitlines()) == 1


def test_pretrain_augment_takes_the_checkpoints_pipeline_and_size():
    import torch

    from cssl.core.errors import ConfigError
    from cssl.evaluate import check_normalisation, classifier_views
    from cssl.runtime import run as runs

    cfg = _composed("dcl_hcl")
    augment = {"crop_scale": [0.5, 1.0], "hflip": True, "jitter_strength": 0.5, "blur_p": 0.5}
    meta = {"image_size": 24, "config": {"data": {"augment": augment}}}
    data = runs.build_data(cfg, train_split="labelled", views=classifier_views(cfg, meta, "ckpt"))
    views = data.train_transform
    assert views(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)).shape == (2, 3, 24, 24)
    assert views.blur is not None and views.blur.p == 0.5
    with pytest.raises(ConfigError, match="train_augment=pretrain"):
        classifier_views(cfg, {"image_size": 24}, "ckpt")
    # the normalisation belongs to the pipeline: a checkpoint pretrained with other constants is refused
    meta["config"]["data"]["std"] = [0.2023, 0.1994, 0.2010]
    with pytest.raises(ConfigError, match=r"data.std=\[0.2023, 0.1994, 0.201\]"):
        check_normalisation(cfg, data, meta, "ckpt")
    meta["config"]["data"]["std"] = list(data.std)
    check_normalisation(cfg, data, meta, "ckpt")
    assert data.train_transform.std == tuple(float(v) for v in data.std)


# -- image folders: the classifier's training crops cut from the original image on the loader workers -------
RED, BLUE, GREY = (230, 20, 20), (20, 20, 230), (128, 128, 128)


def wide_folder(root):
    """train/ and val/ with classes a, b: 64x32 PNGs whose left quarter is red and right quarter blue, which
    a resize + centre-square decode never shows."""
    import numpy as np
    from PIL import Image

    image = np.full((32, 64, 3), GREY, dtype=np.uint8)
    image[:, :16], image[:, 48:] = RED, BLUE
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(image).save(root / split / cls / f"{i}.png")
    return root


def test_imagefolder_classifier_crops_are_cut_from_the_original_on_the_workers(tmp_path):
    from types import SimpleNamespace

    import torch

    from cssl.data import ViewAugment
    from cssl.data.folder import FolderViews
    from cssl.data.views import ViewSpec
    from cssl.evaluate import classifier_views
    from cssl.runtime import run as runs

    root = wide_folder(tmp_path)
    cfg = _composed("moco", "data=imagefolder", f"data.root={root}", "data.image_size=16", "data.batch_size=4")
    data = runs.build_data(cfg, train_split="labelled", views=classifier_views(cfg, {}, "ckpt"))
    data.check()
    train = data.train_dataloader().dataset
    assert isinstance(train, FolderViews) and train.views == [ViewSpec(16, (0.08, 1.0))]
    assert isinstance(data.view_augment, ViewAugment) and data.view_augment.crop is None  # photometry only

    torch.manual_seed(0)
    reds = blues = 0
    for _ in range(25):
        for i in range(len(train)):
            (view,), label, skipped = train[i]
            assert view.shape == (3, 16, 16) and view.dtype == torch.uint8 and skipped == 0
            pixels = view.flatten(1).T.int()  # (256, 3)
            reds += bool(((pixels - torch.tensor(RED)).abs().amax(1) < 10).any())
            blues += bool(((pixels - torch.tensor(BLUE)).abs().amax(1) < 10).any())
    assert reds > 40 and blues > 40, (reds, blues)  # of 200 crops: the outer quarters are reached

    # on the device: one normalised tensor per batch (what LinearProbe.training_step takes)
    data.trainer = SimpleNamespace(training=True)
    batch = next(iter(data.train_dataloader()))
    x, y = data.on_after_batch_transfer(batch, 0)
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.shape == (4,)
    # test images stay resize load_size + centre crop image_size, never the outer quarters
    data.trainer = SimpleNamespace(training=False)
    images, labels = next(iter(data.val_dataloader()[-1]))
    assert images.shape[-2:] == (data.load_size, data.load_size)
    x, _ = data.on_after_batch_transfer((images, labels), 0)
    assert x.shape[-2:] == (16, 16)
    raw = images.flatten(2).transpose(1, 2).int()  # (B, S*S, 3)
    assert not ((raw - torch.tensor(RED)).abs().amax(2) < 10).any()


def test_linear_eval_on_an_image_folder_runs_end_to_end_on_worker_crops(checkpoint, tmp_path, monkeypatch):
    from cssl.data import datamodules
    from cssl.data.folder import FolderViews

    made = []

    class Recorded(FolderViews):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(datamodules, "FolderViews", Recorded)
    root = wide_folder(tmp_path / "folder")
    args = [
        f"ckpt={checkpoint}",
        "protocol=moco",
        "data=imagefolder",
        f"data.root={root}",
        "data.image_size=32",
        "data.batch_size=4",
        "data.num_workers=0",
        "logger=none",
        "trainer.progress_bar=false",
        "trainer.max_epochs=1",
        f"run_dir={tmp_path / 'run'}",
    ]
    code, err = run_inprocess("linear_eval", args)
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["protocol"] == "moco" and summary["epochs"] == 1 and summary["data"] == "imagefolder"
    assert 0 <= summary["top1_last"] <= summary["top5_last"] <= 1
    (views,) = made
    assert [(v.size, v.scale) for v in views.views] == [(32, (0.08, 1.0))]
