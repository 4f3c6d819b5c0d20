"""data=folder as a data module: held-out sets and monitors with and without labels, the label-free
validation metrics, unreadable files, the index made by the first process and read by the others, and an
end-to-end run followed by cssl.preview."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cssl.core.errors import ConfigError
from cssl.data import build_datamodule
from cssl.data.folder import FolderViews
from cssl.data.views import ViewSpec
from cssl.eval.monitor import HELD_OUT, KnnMonitor
from tests.conftest import QUICK, run_inprocess
from tests.data import fabricate as FB


def write_images(folder: Path, n: int, seed: int = 0, ext: str = "png") -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"im{i:03d}.{ext}"
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def module(**kwargs):
    kwargs.setdefault("index", "off")
    kwargs.setdefault("image_size", 16)
    dm = build_datamodule("folder", batch_size=2, **kwargs)
    dm.check()
    return dm


def test_unlabelled_folder_holds_out_a_seeded_slice_and_turns_monitors_off(tmp_path, capsys):
    write_images(tmp_path / "x", 30)
    (tmp_path / "x" / "notes.txt").write_text("not an image")
    dm = module(root=str(tmp_path / "x"), val_fraction=0.1)
    err = capsys.readouterr().err
    assert "30 images" in err and "1 not an image" in err and err.count("skipped") == 1
    assert "kNN monitor and online probe off" in err
    assert dm.num_classes == 0 and not dm.online_probe and dm.val_views
    pre = {p for p, _ in dm.sets["pretrain"].samples}
    val = {p for p, _ in dm.sets["val"].samples}
    assert len(val) == 3 and len(pre) == 27 and not pre & val
    assert len(dm.val_dataloader()) == 1  # the held-out slice only: no bank
    again = module(root=str(tmp_path / "x"), val_fraction=0.1, seed=5)  # the run's seed does not move it
    assert {p for p, _ in again.sets["val"].samples} == val


def test_labelled_folder_without_held_out_set_holds_out_labelled_images(tmp_path):
    for cls in ("a", "b", "c"):
        write_images(tmp_path / cls, 10, seed=ord(cls))
    dm = module(root=str(tmp_path), labels="folders", val_fraction=0.2)
    assert dm.num_classes == 3 and dm.online_probe
    val = dm.sets["val"].samples
    assert len(val) == 6 and len(dm.sets["labelled"]) == 24 and len(dm.sets["pretrain"]) == 24
    assert not {p for p, _ in val} & {p for p, _ in dm.sets["pretrain"].samples}
    assert len(dm.val_dataloader()) == 2  # bank, held out


def test_labelled_training_images_with_eval_root(tmp_path):
    for cls in ("a", "b"):
        write_images(tmp_path / "train" / cls, 6, seed=ord(cls))
        write_images(tmp_path / "val" / cls, 2, seed=ord(cls) + 1)
    dm = module(root=str(tmp_path / "train"), labels="folders", eval_root=str(tmp_path / "val"))
    assert dm.num_classes == 2 and len(dm.sets["labelled"]) == 12 and len(dm.sets["val"]) == 4
    assert len(dm.sets["pretrain"]) == 12
    image, label = dm.sets["val"][3]
    assert image.shape == (3, dm.load_size, dm.load_size) and image.dtype == torch.uint8 and label == 1
    write_images(tmp_path / "val" / "zzz", 1)
    with pytest.raises(ConfigError, match=r"classes the training labels lack \(zzz\)"):
        module(root=str(tmp_path / "train"), labels="folders", eval_root=str(tmp_path / "val"))


def test_labels_only_in_a_held_out_list_split_it_for_the_knn_monitor_and_switch_the_probe_off(tmp_path, capsys):
    write_images(tmp_path / "pile", 12)
    held = write_images(tmp_path / "held", 8, seed=1)
    lst = tmp_path / "held.csv"
    lst.write_text("path,label\n" + "".join(f"held/{p.name},{'ab'[i % 2]}\n" for i, p in enumerate(held)))
    dm = module(root=str(tmp_path / "pile"), eval_files=str(lst))
    assert dm.num_classes == 2 and not dm.online_probe
    assert len(dm.sets["labelled"]) == 4 and len(dm.sets["val"]) == 4 and len(dm.sets["pretrain"]) == 12
    assert "online probe off" in capsys.readouterr().err


def test_a_file_list_with_a_few_labels(tmp_path):
    paths = write_images(tmp_path / "imgs", 10)
    lines = [f"imgs/{p.name}" + ("\t" + "xy"[i % 2] if i < 6 else "") for i, p in enumerate(paths)]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    dm = module(files=str(tmp_path / "list.txt"), labels="list", val_fraction=0.34)
    assert dm.num_classes == 2 and len(dm.sets["val"]) == 2  # 34% of the 6 labelled images
    assert len(dm.sets["pretrain"]) == 8 and len(dm.sets["labelled"]) == 4


def test_bad_options_are_one_line_errors(tmp_path):
    write_images(tmp_path, 3)
    for kwargs, match in (
        ({"labels": "maybe"}, "data.labels"),
        ({"val_fraction": 1.5}, "data.val_fraction"),
        ({"eval_root": str(tmp_path), "eval_files": "x.txt"}, "at most one"),
        ({"decode": "tpu"}, "data.decode"),
    ):
        with pytest.raises(ConfigError, match=match):
            build_datamodule("folder", root=str(tmp_path), batch_size=2, image_size=16, **kwargs)
    with pytest.raises(ConfigError, match="exactly one of"):
        module()
    (tmp_path / "only").mkdir()
    with pytest.raises(ConfigError, match="no images in"):
        module(root=str(tmp_path / "only"))
    with pytest.raises(ConfigError, match="one class only"):
        (tmp_path / "one").mkdir()
        write_images(tmp_path / "one" / "k", 3)
        module(root=str(tmp_path / "one"), labels="folders")


def test_an_unreadable_image_is_skipped_and_counted_during_training(tmp_path):
    paths = write_images(tmp_path, 6, ext="jpg")
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) // 3])  # truncated
    dm = module(root=str(tmp_path), val_fraction=0.2)
    views = FolderViews(sorted(dm.listing.samples), [ViewSpec(8)])
    with pytest.warns(UserWarning, match=r"skipped unreadable image .*im002\.jpg"):
        item, label, skipped = views[2]
    assert skipped == 1 and label == -1 and item[0].shape == (3, 8, 8)


def test_the_label_free_metrics_match_a_direct_computation():
    torch.manual_seed(0)
    feats, z1, z2 = torch.randn(10, 6), torch.randn(10, 6), torch.randn(10, 6)
    monitor = KnnMonitor(0, k=5, temperature=0.5, false_negative_k=3)
    monitor.add(HELD_OUT, feats, torch.full((10,), -1))
    monitor.add_pair(z1, z2)
    logs = monitor.compute(lambda x: x, diagnostics=False)
    a, b = F.normalize(z1.double(), dim=1), F.normalize(z2.double(), dim=1)
    loss, entropy = 0.0, 0.0
    for i in range(10):
        logits = [float(a[i] @ b[j]) / 0.5 for j in range(10)]
        loss += -logits[i] + math.log(sum(math.exp(v) for v in logits))
        negs = [logits[j] for j in range(10) if j != i]
        total = sum(math.exp(v) for v in negs)
        entropy += math.exp(-sum(math.exp(v) / total * (v - math.log(total)) for v in negs))
    assert logs["val/pair_loss"].item() == pytest.approx(loss / 10, rel=1e-4)
    assert logs["val/effective_negatives"].item() == pytest.approx(entropy / 10, rel=1e-4)
    assert logs["val/alignment"].item() == pytest.approx(((a - b).norm(dim=1) ** 2).mean().item(), rel=1e-5)
    assert "val/knn_top1" not in logs and "val/uniformity" in logs


def test_imagefolder_is_the_folder_module_with_the_imagenet_layout(tmp_path):
    from cssl.data.datamodules import FolderDataModule

    FB.write_imagefolder(tmp_path)
    dm = build_datamodule("imagefolder", root=str(tmp_path), batch_size=2, image_size=32)
    assert isinstance(dm, FolderDataModule)
    dm.check()
    folder = module(root=str(tmp_path / "train"), labels="folders", eval_root=str(tmp_path / "val"), image_size=32)
    assert [p for p, _ in dm.sets["labelled"].samples] == [p for p, _ in folder.sets["labelled"].samples]
    assert [y for _, y in dm.sets["val"].samples] == [y for _, y in folder.sets["val"].samples]


# -- the index under DDP: the first process builds it, the others read it --------------------------------------
def _rank_reads(rank: int, world: int, root: str) -> dict:
    import os

    import torch.distributed as dist

    from cssl.data import listing

    os.environ["LOCAL_RANK"] = str(rank)
    walks: list[str] = []
    real = listing.walk

    def counted(path: str):
        walks.append(path)
        return real(path)

    listing.walk = counted
    dm = build_datamodule("folder", root=root, batch_size=2, image_size=16)
    if rank == 0:
        dm.prepare_data()  # Lightning calls it on local rank 0 only, then every rank waits
    dist.barrier()
    dm.setup()
    return {"walks": len(walks), "samples": [p for p, _ in dm.sets["pretrain"].samples]}


@pytest.mark.slow
def test_rank_zero_builds_the_index_and_rank_one_reads_it_without_walking(tmp_path):
    from tests.distributed.harness import run_ranks

    write_images(tmp_path / "x" / "a", 6)
    write_images(tmp_path / "x" / "b", 6, seed=3)
    zero, one = run_ranks(_rank_reads, world_size=2, args=(str(tmp_path / "x"),))
    assert zero["walks"] == 1 and one["walks"] == 0
    assert zero["samples"] == one["samples"] and len(one["samples"]) == 11  # 12 less the held-out image
    assert (tmp_path / "x" / ".cssl" / "index.json").is_file()


# -- end to end ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_on_an_unlabelled_folder_logs_label_free_metrics_then_preview(tmp_path):
    write_images(tmp_path / "pile" / "deep", 20)
    write_images(tmp_path / "pile", 20, seed=1, ext="jpg")
    (tmp_path / "pile" / "meta.json").write_text("{}")
    run_dir = tmp_path / "run"
    code, err = run_inprocess(
        "train",
        [
            *QUICK,
            "data=folder",
            f"data.root={tmp_path / 'pile'}",
            "data.batch_size=8",
            "data.image_size=32",
            "data.num_workers=0",
            "data.val_fraction=0.2",
            "trainer.max_epochs=1",
            f"run_dir={run_dir}",
        ],
    )
    assert code == 0, err[-3000:]
    assert "kNN monitor and online probe off" in err and "skipped 1 not an image" in err
    metrics = json.loads((run_dir / "summary.json").read_text())["metrics"]
    for key in ("val/uniformity", "val/alignment", "val/effective_negatives", "val/pair_loss", "train/loss"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert "val/knn_top1" not in metrics and "val/online_top1" not in metrics
    from cssl import preview

    out = tmp_path / "preview"
    try:
        preview.main(["data=folder", f"data.root={tmp_path / 'pile'}", "data.image_size=32", f"preview.out={out}"])
    except SystemExit as exc:
        assert not exc.code
    assert (out / "views.png").is_file() and (out / "views.pt").is_file()


def test_linear_evaluation_of_unlabelled_images_is_a_one_line_error(tmp_path):
    write_images(tmp_path, 6)
    dm = build_datamodule("folder", root=str(tmp_path), batch_size=2, image_size=16, train_split="labelled")
    with pytest.raises(ConfigError, match="no labels to train a linear probe on") as err:
        dm.check()
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_an_unlabelled_run_under_ddp_on_two_processes(tmp_path):
    from tests.conftest import check_ok, run_cli

    write_images(tmp_path / "pile", 24)
    run_dir = tmp_path / "run"
    check_ok(
        run_cli(
            "train.py",
            *QUICK,
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
            "data=folder",
            f"data.root={tmp_path / 'pile'}",
            "data.batch_size=4",
            "data.image_size=32",
            "data.num_workers=0",
            "data.val_fraction=0.2",
            "trainer.max_epochs=1",
            f"run_dir={run_dir}",
        )
    )
    metrics = json.loads((run_dir / "summary.json").read_text())["metrics"]
    assert "val/pair_loss" in metrics and "val/knn_top1" not in metrics
    assert (tmp_path / "pile" / ".cssl" / "index.json").is_file()
