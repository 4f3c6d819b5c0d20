"""bench/gpu_acceptance.sh --smoke: the acceptance run's whole code path on the CPU at tiny sizes (every method,
fp32 and bf16-mixed, the device augmentation, the device decoder's fallbacks, the loader, DDP over gloo), with
acceptance.json and acceptance.md written with every field. Timings are printed, never asserted."""

from __future__ import annotations

import importlib.util
import json
import subprocess

import pytest

from cssl.methods import list_methods
from tests.conftest import REPO, cli_env


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_acceptance", REPO / "bench" / "gpu_acceptance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TRAINING_FIELDS = {
    "method", "setting", "devices", "images_per_second", "step_seconds", "first_step_seconds", "compile_seconds",
    "peak_memory_bytes", "memory_kind", "out_of_memory", "losses", "loss_finite",
}  # fmt: skip
PRECISION_FIELDS = {
    "method", "loss_fp32", "loss_bf16", "absolute_difference", "relative_difference", "bound", "relative_bound",
    "within_bound",
}  # fmt: skip


@pytest.mark.slow
def test_smoke_run_writes_every_field(tmp_path):
    out = tmp_path / "acceptance"
    done = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_acceptance.sh"), "--smoke", "--out", str(out)],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert str(out) in done.stdout
    report = json.loads((out / "acceptance.json").read_text())
    md = (out / "acceptance.md").read_text()
    methods = list_methods()
    acc = load_script()

    assert report["smoke"] is True and report["checks"]["ok"] is True
    rows = {(r["method"], r["setting"]): r for r in report["training"]}
    for name in methods:  # both precisions that exist on the CPU, for every method
        for setting in (acc.RECOMMENDED, "fp32"):
            row = rows[(name, setting)]
            assert set(row) == TRAINING_FIELDS
            assert row["loss_finite"] and row["images_per_second"] > 0 and row["peak_memory_bytes"] > 0
            assert f"| {name} | {setting} |" in md
    for name in acc.EXTRA_SETTINGS_FOR:
        assert set(acc.SETTINGS) <= {s for m, s in rows if m == name}
        assert rows[(name, "bf16-mixed+channels_last+compile")]["compile_seconds"] is not None
    assert [r["method"] for r in report["precision"]] == methods
    for row in report["precision"]:
        assert set(row) == PRECISION_FIELDS and row["within_bound"]
        assert row["loss_fp32"] != row["loss_bf16"]  # bf16 really ran
    assert len(report["augmentation"]) == 3 and all(r["images_per_second"] > 0 for r in report["augmentation"])
    decode = report["decode_gpu"]
    assert decode["fallback_files"] == decode["planted_fallbacks"] == 3 and decode["images_per_second"] > 0
    loader = report["loader"]
    assert loader["decode_cpu_per_worker"] > 0 and set(loader["workers_per_gpu"]) == set(methods)
    ddp = report["ddp"]
    assert ddp["world_size"] == 2 and ddp["backend"] == "gloo" and ddp["parity"]["ok"]
    assert ddp["scaling"] and all(r["images_per_second_all"] > 0 for r in ddp["scaling"])
    for key in ("environment", "settings", "checks"):
        assert report[key]
    for section in ("## Training", "## Loss in fp32 and bf16-mixed", "## Device augmentation alone",
                    "## data.decode=gpu", "## Loader per CPU worker", "## DDP", "## Checks"):  # fmt: skip
        assert section in md


def test_loss_bound_follows_the_estimator():
    acc = load_script()
    eps = acc.COSINE_ERROR

    from cssl.contrastive.negatives import Negatives

    class Method:
        negatives = Negatives(temperature=0.2)

    assert acc.loss_bound(Method()) == pytest.approx(2 * eps / 0.2)
    Method.negatives = Negatives(temperature=0.2, estimator="hcl", tau_plus=0.1, beta=1.0)
    assert acc.loss_bound(Method()) == pytest.approx((1 + 3 / 0.9) * eps / 0.2)
    Method.negatives = None  # a method without negatives (BYOL)
    assert acc.loss_bound(Method()) == pytest.approx(4 * eps)


def test_without_a_gpu_the_full_run_says_so_in_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():  # this test is about the machine without one; the GPU run is the script itself
        pytest.skip("a GPU is visible")
    acc = load_script()
    assert acc.main(["--out", str(tmp_path)]) == 2
