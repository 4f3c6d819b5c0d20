"""The bench scripts' --quick modes run and print their tables (timings are printed, never asserted)."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import REPO


def run_quick(script: str, capsys, *extra: str) -> str:
    spec = importlib.util.spec_from_file_location(f"bench_{script}", REPO / "bench" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick", *extra])
    return capsys.readouterr().out


def test_loss_bench_quick(capsys):
    out = run_quick("loss", capsys)
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["64"], ["128"])]
    impls = {row[1] for row in rows}
    assert {"floor", "naive", "lightly", "cssl/infonce", "cssl/dcl", "cssl/hcl"} <= impls
    # the printed infonce loss equals the textbook implementation's
    for views in ("64", "128"):
        loss = {row[1]: row[-1] for row in rows if row[0] == views}
        assert loss["cssl/infonce"] == loss["naive"]


def test_pools_bench_quick(capsys):
    out = run_quick("pools", capsys)
    for part in ("ResNet-18 fwd+bwd", "queue enqueue", "MoChi mixing", "AdCo bank", "queue + MoChi"):
        assert part in out


def test_throughput_bench_quick(capsys):
    methods = ["simclr", "mochi"]  # the in-batch and the queue family; the full loop is the script's default
    out = run_quick("throughput", capsys, "--methods", *methods)
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:] if line.strip()}
    assert set(methods) <= set(rows)
    assert all(float(v) > 0 for name in methods for v in rows[name])


def test_loader_bench_quick(capsys):
    out = run_quick("loader", capsys)
    rows = {line[:24].strip(): line[24:].split() for line in out.splitlines() if line[:1] in "nodtcf"}
    for name in ("new 2x224", "new 2x224+4x96", "old 256 square", "torchvision RRC 2x224", "decode=gpu worker"):
        assert float(rows[name][0]) > 0, name
    # the coverage figure is a seeded count, not a timing: views from the original reach the outer quarters
    assert float(rows["cut from the original"][0]) >= 0.25 and float(rows["from the old square"][0]) == 0


@pytest.mark.slow
def test_guards_bench_quick(capsys, tmp_path):
    out = run_quick("guard_gains", capsys, "--methods", "simclr", "--root", str(tmp_path))
    (row,) = [line.split() for line in out.splitlines() if line.startswith("simclr   ")][:1]
    assert row[1] == "0" and 0 <= float(row[2]) <= 1 and 0 <= float(row[3]) <= 1
    assert "margin in use" in out


def test_index_bench_quick(capsys, tmp_path):
    out = run_quick("index", capsys, "--dir", str(tmp_path))
    rows = {
        line.split()[0]: line.split("(made")[0].split()[-6:]  # os.walk, ImageFolder, cold, warm, read, index MB
        for line in out.splitlines()
        if line.startswith(("nested", "flat"))
    }
    assert set(rows) == {"nested", "flat"}
    assert all(float(v) >= 0 for row in rows.values() for v in row)


@pytest.mark.slow
def test_shards_bench_quick(capsys):
    out = run_quick("shards", capsys)  # a conversion (LitData's writer process) and four passes
    rows = {line[:20].strip(): line[20:].split() for line in out.splitlines() if line.startswith(("folder", "shards"))}
    for name in ("folder 2x224", "shards 2x224", "folder read only", "shards read only"):
        assert float(rows[name][0]) > 0 and float(rows[name][1]) > 0, name
