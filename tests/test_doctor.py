"""``python -m cssl.doctor``: the verdict on crafted measurements, the measured table on digits, lab and an
image folder, and the same one-line errors as train.py. Timings are printed, never asserted."""

from __future__ import annotations

import contextlib
import io
import math
import subprocess
import sys

import pytest

from cssl.doctor import MARGIN, Measurements, compose_config, doctor, main, verdict
from tests.conftest import REPO, cli_env, run_cli
from tests.data import fabricate

GIB = 2**30


def crafted(**changes) -> Measurements:
    """A step-bound run by default: a fast in-memory loader, a device making 500 images/s."""
    values = dict(
        batch_size=100,
        world_size=1,
        num_workers=0,
        worker_cores=7,
        loader=100_000.0,
        augment=5_000.0,
        step=1_000.0 / 1.8,  # with the augmentation: 0.02 + 0.18 s per batch, 500 images/s
        memory_peak=10 * GIB,
        memory_total=80 * GIB,
        images_per_epoch=10_000,
    )
    values.update(changes)
    return Measurements(**values)


def test_step_bound_in_memory_data_needs_no_workers():
    v = verdict(crafted())
    assert v.bound == "step" and v.num_workers == 0 and v.batch_fits
    # main-process loading 1 ms + device 200 ms per batch of 100 images
    assert v.images_per_second == pytest.approx(100 / 0.201)
    assert v.epoch_seconds == pytest.approx(10_000 / v.images_per_second)


def test_loader_bound_recommends_the_workers_that_keep_up():
    v = verdict(crafted(num_workers=2, loader=120.0))  # 2 x 120 = 240 < 500 images/s of the device
    assert v.bound == "loader"
    assert v.images_per_second == pytest.approx(240.0)
    assert v.num_workers == math.ceil(MARGIN * 500 / 120)  # 5 workers: 600 >= 550
    assert v.best_images_per_second == pytest.approx(500.0)
    assert "data.num_workers=5" in v.reason


def test_main_process_loading_that_costs_a_large_share_is_loader_bound():
    v = verdict(crafted(loader=400.0))  # 250 ms loading + 200 ms on the device
    assert v.bound == "loader" and v.num_workers == math.ceil(MARGIN * 500 / 400)
    assert v.images_per_second == pytest.approx(100 / 0.45)


def test_enough_workers_make_it_step_bound():
    v = verdict(crafted(num_workers=8, loader=120.0))  # 960 images/s of loading
    assert v.bound == "step" and v.images_per_second == pytest.approx(500.0)
    assert v.num_workers == 5  # fewer suffice


def test_no_worker_count_can_keep_up_with_too_few_cores():
    v = verdict(crafted(num_workers=2, loader=50.0, worker_cores=3))  # 11 workers needed, 3 cores
    assert v.bound == "loader" and v.num_workers is None and v.batch_fits
    assert v.best_images_per_second == pytest.approx(150.0)
    assert "no worker count" in v.reason


def test_world_size_multiplies_the_rate_and_the_gather_adds_to_the_step():
    one = verdict(crafted())
    four = verdict(crafted(world_size=4, gather_seconds=0.05))
    assert four.images_per_second == pytest.approx(4 * 100 / 0.251)
    assert four.images_per_second < 4 * one.images_per_second


@pytest.mark.parametrize(
    "changes", [{"out_of_memory": True, "step": None}, {"memory_peak": 90 * GIB}], ids=["failed", "over"]
)
def test_out_of_memory(changes):
    v = verdict(crafted(**changes))
    assert v.bound == "out of memory" and not v.batch_fits and v.images_per_second is None
    assert "data.batch_size=100" in v.reason


# -- measured runs ---------------------------------------------------------------------------------------
FAST = {"loader_seconds": 0.3, "steps": 2, "warmup": 1}
SMALL = ["logger=none", "backbone=timm:test_resnet", "method.proj_hidden_dim=64", "data.batch_size=32"]


def check_report(result: dict, out: str) -> None:
    m, v = result["measurements"], result["verdict"]
    for name in ("loader", "augment", "step"):
        assert m[name] and m[name] > 0, name
    assert m["memory_peak"] and m["memory_peak"] > 0
    assert v["bound"] in ("loader", "step") and v["batch_fits"]
    assert v["images_per_second"] > 0 and v["epoch_seconds"] > 0
    assert isinstance(v["num_workers"], int)
    assert result["details"]["losses_finite"]
    for row in ("loader, one worker", "device augmentation", "training step", "memory", "verdict:", "expected:"):
        assert row in out, row


def test_doctor_on_digits(capsys):
    result = doctor(compose_config(SMALL), **FAST)
    check_report(result, capsys.readouterr().out)
    assert result["measurements"]["images_per_epoch"] == 1437 // 32 * 32


def test_doctor_on_lab(capsys, tmp_path):
    overrides = ["experiment=lab", *SMALL, f"data.root={tmp_path}", "data.train_size=200", "data.val_size=50"]
    result = doctor(compose_config(overrides), **FAST)
    check_report(result, capsys.readouterr().out)
    assert result["details"]["data"] == "lab" and result["measurements"]["images_per_epoch"] == 192


def test_doctor_on_an_image_folder(capsys, tmp_path):
    root = fabricate.write_imagefolder(tmp_path / "images")
    overrides = [*SMALL, "data=imagefolder", f"data.root={root}", "data.image_size=32", "data.batch_size=4"]
    result = doctor(compose_config([*overrides, "data.num_workers=2"]), **FAST)
    check_report(result, capsys.readouterr().out)
    assert result["measurements"]["num_workers"] == 2 and result["measurements"]["images_per_epoch"] == 8


@pytest.mark.slow
def test_doctor_measures_the_gather_under_ddp(capsys):
    overrides = [*SMALL, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    result = doctor(compose_config(overrides), **FAST)
    out = capsys.readouterr().out
    assert result["measurements"]["world_size"] == 2 and result["measurements"]["gather_seconds"] > 0
    assert "all-gather (DDP)" in out


# -- errors ------------------------------------------------------------------------------------------------
def run_main(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        main(args)
    return int(exit_info.value.code or 0), err.getvalue()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["data=nope"], "error: unknown data 'nope'"),
        (["foo=1"], "error: Could not override 'foo'"),
        (["data.batch_sizee=3"], "error: Could not override 'data.batch_sizee'"),
        (["data=imagefolder", "data.root=/nonexistent/cssl"], "error: data.root: image folder"),
        (["data.batch_size=5000", "logger=none"], "error: data.batch_size=5000 exceeds"),
    ],
)
def test_one_line_errors(args, expected):
    code, err = run_main(args)
    assert code == 2, err
    assert err.startswith(expected) and err.count("\n") == 1, err


def test_same_error_as_train():
    """``python -m cssl.doctor`` fails exactly as train.py does on the same bad input."""
    args = ("data=cifar10", "data.root=/nonexistent/cssl", "logger=none")
    doctor_run = subprocess.run(
        [sys.executable, "-m", "cssl.doctor", *args], cwd=REPO, env=cli_env(), capture_output=True, text=True
    )
    train_run = run_cli("train.py", *args)
    assert doctor_run.returncode == train_run.returncode == 2
    assert doctor_run.stderr.strip() == train_run.stderr.strip() and doctor_run.stderr.count("\n") == 1
