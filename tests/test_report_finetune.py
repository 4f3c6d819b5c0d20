"""cssl.report joins fine-tuning and label-subset evaluations to their pretraining runs (a column per subset),
and random-init fine-tuning becomes baseline rows in the same columns."""

import csv
import json
from pathlib import Path

import pytest

from cssl import report
from cssl.report.load import eval_columns
from tests.test_report import RUNS, baseline_cache, write_run  # noqa: F401 - the fixture is used by name


def write_eval(
    folder: Path, checkpoint: str | None, top1: float, *, mode="finetune", init="pretrained", tag=None, seed=0
):
    folder.mkdir(parents=True)
    summary = {
        "mode": mode,
        "init": init,
        "protocol": "default",
        "top1": top1,
        "top5": 1.0,
        "top1_best": top1,
        "epochs": 1,
        "subset": {"tag": tag, "images": 20, "of": 2000} if tag else None,
        "checkpoint": checkpoint,
        "backbone": "resnet18",
        "data": "digits",
        "seed": seed,
    }
    (folder / "summary.json").write_text(json.dumps(summary))


def test_eval_columns_name_mode_and_subset():
    assert eval_columns({"mode": "finetune", "top1": 0.5, "subset": {"tag": "frac0.01"}}) == {
        "finetune_top1_frac0.01": 0.5
    }
    assert eval_columns({"mode": "linear", "top1": 0.5, "top5": 0.9}) == {"linear_top1": 0.5, "linear_top5": 0.9}
    assert eval_columns({"mode": "knn", "top1": 0.4, "top1_best": 0.9}) == {"eval_knn_top1": 0.4}


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for (method, estimator, tau_plus, seed), values in RUNS.items():
        write_run(tmp_path / "runs" / f"{method}_s{seed}", method=method, estimator=estimator, tau_plus=tau_plus,
                  seed=seed, values=values)  # fmt: skip
    ckpt = str(tmp_path / "runs/simclr_s0/checkpoints/last.ckpt")
    write_eval(tmp_path / "evals/ft1", ckpt, 0.60, tag="frac0.01")
    write_eval(tmp_path / "evals/ft10", ckpt, 0.80, tag="frac0.1")
    write_eval(tmp_path / "evals/lin1", ckpt, 0.50, mode="linear", tag="frac0.01")
    write_eval(tmp_path / "evals/rand1_s0", ckpt, 0.20, init="random", tag="frac0.01")
    write_eval(tmp_path / "evals/rand1_s1", None, 0.30, init="random", tag="frac0.01", seed=1)
    return tmp_path


def test_report_joins_finetune_runs_and_adds_random_init_rows(runs, capsys):
    report.main(["runs", "evals", "--out", "out", "--name", "ft", "--all", "--no-baselines"])
    assert "not among the runs" not in capsys.readouterr().err  # random-init runs are baselines, not joins
    with (runs / "out" / "ft.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    simclr = next(r for r in rows if r["method.name"] == "simclr")
    assert float(simclr["finetune_top1_frac0.01_mean"]) == pytest.approx(0.60)
    assert float(simclr["finetune_top1_frac0.1_mean"]) == pytest.approx(0.80)
    assert float(simclr["linear_top1_frac0.01_mean"]) == pytest.approx(0.50)
    baseline = next(r for r in rows if r["baseline"])
    assert baseline["baseline"] == "random-init fine-tuning resnet18"
    assert float(baseline["finetune_top1_frac0.01_mean"]) == pytest.approx(0.25) and baseline["seed_list"] == "0 1"
    md = (runs / "out" / "ft.md").read_text()
    assert "*random-init fine-tuning resnet18*" in md and "finetune_top1_frac0.01" in md
