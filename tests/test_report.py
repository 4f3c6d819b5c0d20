"""python -m cssl.report on fabricated run dirs (two methods x two seeds, linear evaluations joined by
checkpoint path), its one-line errors, a mocked W&B group, and a real two-job Hydra multirun."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cssl import report
from cssl.core.errors import ConfigError
from tests.conftest import REPO, cli_env, run_cli

PNG = b"\x89PNG\r\n\x1a\n"

# (method, estimator, tau_plus, seed) -> (knn_top1, online_top1, train_loss, neg/pos_sim)
RUNS = {
    ("simclr", "infonce", 0.0, 0): (0.70, 0.50, 4.0, 0.9),
    ("simclr", "infonce", 0.0, 1): (0.80, 0.60, 3.0, 0.7),
    ("dcl", "dcl", 0.1, 0): (0.75, 0.40, 2.0, 0.6),
    ("dcl", "dcl", 0.1, 1): (0.95, 0.30, 1.0, 0.5),
}


@pytest.fixture(autouse=True)
def baseline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Baselines computed by a test go to its own folder, never to the user's cache."""
    monkeypatch.setenv("CSSL_BASELINE_CACHE", str(tmp_path / "baseline-cache"))
    return tmp_path / "baseline-cache"


def write_run(folder: Path, *, method: str, estimator: str, tau_plus: float, seed: int, values: tuple) -> Path:
    """A pretraining run dir as train.py writes it (summary.json + config.yaml), by hand."""
    knn, online, loss, pos_sim = values
    folder.mkdir(parents=True)
    config = {
        "method": {"name": method, "estimator": estimator, "temperature": 0.5, "tau_plus": tau_plus},
        "data": {"name": "digits", "batch_size": 256, "root": f"/data/{seed}", "augment": {"crop_scale": [0.2, 1.0]}},
        "backbone": "resnet18",
        "seed": seed,
        "run_dir": f"runs/{method}_digits/2025-01-0{seed + 1}_10-00-00",
        "logger": {"name": "none", "group": f"{method}_digits", "tags": [f"method={method}"]},
    }
    summary = {
        "method": method,
        "estimator": estimator,
        "data": "digits",
        "backbone": "resnet18",
        "global_step": 100,
        "epochs": 1,
        "train_loss": loss,
        "online_top1": online,
        "knn_top1": knn,
        "train_online_top1": 0.5,
        "images_per_second": 100.0,
        "wall_seconds": 10.0,
        "seed": seed,
        "run_dir": str(folder),
        "checkpoint": str(folder / "checkpoints" / "last.ckpt"),
        "group": f"{method}_digits",
        "tags": [f"method={method}"],
        "metrics": {"train/loss": loss, "val/knn_top1": knn, "val/online_top1": online, "neg/pos_sim": pos_sim},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def write_linear(folder: Path, checkpoint: str, top1: float, mode: str = "linear") -> None:
    folder.mkdir(parents=True)
    summary = {"mode": mode, "top1": top1, "top5": 1.0, "epochs": 1, "checkpoint": checkpoint, "method": "simclr"}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "config.yaml").write_text(yaml.safe_dump({"mode": mode, "ckpt": checkpoint, "seed": 0}))


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Four pretraining runs under runs/, two linear evaluations of the simclr runs under evals/ (one with
    an absolute checkpoint path, one relative to the working directory)."""
    monkeypatch.chdir(tmp_path)
    for (method, estimator, tau_plus, seed), values in RUNS.items():
        write_run(
            tmp_path / "runs" / f"{method}_s{seed}",
            method=method,
            estimator=estimator,
            tau_plus=tau_plus,
            seed=seed,
            values=values,
        )
    write_linear(tmp_path / "evals" / "a", str(tmp_path / "runs/simclr_s0/checkpoints/last.ckpt"), 0.82)
    write_linear(tmp_path / "evals" / "b", "runs/simclr_s1/checkpoints/epoch0001.ckpt", 0.88)
    return tmp_path


def mean_std(a: float, b: float) -> tuple[float, float]:
    return (a + b) / 2, abs(a - b) / math.sqrt(2)  # sample std of two values


def test_report_table_csv_and_plots(runs: Path, capsys: pytest.CaptureFixture) -> None:
    written = report.main(["runs", "evals", "--out", "out", "--name", "abl", "--all", "--no-baselines"])
    assert {p.name for p in written} == {"abl.md", "abl.csv", "abl_method.name.png"}
    assert (runs / "out" / "abl_method.name.png").read_bytes()[:8] == PNG

    with (runs / "out" / "abl.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    # method.name varies; estimator and tau_plus follow from it; seed, run_dir, data.root, logger.* are ignored
    assert list(rows[0])[:4] == ["method.name", "method.estimator", "method.tau_plus", "seeds"]
    assert [r["method.name"] for r in rows] == ["dcl", "simclr"]  # sorted by the varied key
    assert [r["seeds"] for r in rows] == ["2", "2"]
    for row, method in zip(rows, ("dcl", "simclr"), strict=True):
        (_, _, tau, _), *_ = [k for k in RUNS if k[0] == method]
        assert float(row["method.tau_plus"]) == tau
        for column, index in (("knn_top1", 0), ("online_top1", 1), ("train_loss", 2), ("neg/pos_sim", 3)):
            a, b = (v[index] for k, v in RUNS.items() if k[0] == method)
            mean, std = mean_std(a, b)
            assert float(row[f"{column}_mean"]) == pytest.approx(mean)
            assert float(row[f"{column}_std"]) == pytest.approx(std)
        assert row["seed_list"] == "0 1"
    # linear evaluations joined to the simclr runs (absolute and cwd-relative checkpoint paths)
    mean, std = mean_std(0.82, 0.88)
    assert float(rows[1]["linear_top1_mean"]) == pytest.approx(mean)
    assert float(rows[1]["linear_top1_std"]) == pytest.approx(std)
    assert rows[0]["linear_top1_mean"] == ""
    assert "val/knn_top1_mean" not in rows[0]  # the summary's knn_top1 already is that metric

    md = (runs / "out" / "abl.md").read_text()
    assert "4 pretraining runs in 2 rows, 2 evaluations joined" in md
    header = (
        "| method.name | seeds | knn_top1 | online_top1 | linear_top1 | linear_top5 | train_loss | train_online_top1 |"
    )
    assert header + " neg/pos_sim | images_per_second | wall_seconds |" in md
    assert "**0.5000" not in md  # equal means: no best
    dcl_knn = "**{:.4f} ± {:.4f}**".format(*mean_std(0.75, 0.95))  # best kNN accuracy in bold
    assert f"| dcl | 2 | {dcl_knn} |" in md
    assert "`method.estimator`, `method.tau_plus`" in md  # listed as following from method.name
    assert "![abl_method.name](abl_method.name.png)" in md
    assert "neg/pos_sim" in capsys.readouterr().out  # the table is printed too


def test_report_numeric_key_sorted_and_plotted(tmp_path: Path) -> None:
    for i, batch in enumerate((128, 16, 64)):
        folder = write_run(
            tmp_path / f"b{batch}",
            method="simclr",
            estimator="infonce",
            tau_plus=0.0,
            seed=0,
            values=(i / 10, 0.1, 1.0, 0.2),
        )
        config = yaml.safe_load((folder / "config.yaml").read_text())
        config["data"]["batch_size"] = batch
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    result = report.build_report(report.load_local([tmp_path]))
    assert result.varied == ["data.batch_size"] and result.plotted == ["data.batch_size"]
    assert [row.values["data.batch_size"] for row in result.rows] == [16, 64, 128]  # numeric, not text order
    assert [row.stats["knn_top1"][0] for row in result.rows] == [0.1, 0.2, 0.0]
    assert all(row.stats["knn_top1"][1] is None for row in result.rows)  # one seed: no std
    written = report.write_report(result, tmp_path / "out", "bs", ["x"])
    assert (tmp_path / "out" / "bs_data.batch_size.png").read_bytes()[:8] == PNG and len(written) == 3


def test_independent_keys_and_bookkeeping() -> None:
    def run(**config: object) -> report.Run:
        return report.Run("r", dict(config), {})

    runs = [
        run(
            **{
                "method.name": "simclr",
                "method.estimator": e,
                "method.temperature": 0.2,
                "trainer.limit_val_batches": 1,
            }
        )
        for e in ("infonce", "dcl")
    ] + [run(**{"method.name": "adco", "method.estimator": "dcl", "method.temperature": 0.12, "method.bank_size": 64})]
    runs[0].config["trainer.limit_val_batches"] = 1.0  # 1 batch is not 100% of the batches
    runs[1].config["checkpoint.every_n_epochs"] = 3
    runs[2].config["run_dir"] = "runs/multirun/2025-01-01_10-00-00/2"
    runs[1].config["backbone_init"] = None  # a key a newer version added with a null default: not a variation
    runs[2].config["method.queue_size"] = 0  # absent elsewhere but not null: varies
    keys = report.varied_keys(runs)
    assert keys == [
        "method.name",
        "method.estimator",
        "method.temperature",
        "trainer.limit_val_batches",
        "method.bank_size",
        "method.queue_size",
    ]
    # temperature and bank_size follow from the method; estimator does not; limit_val_batches neither
    assert report.independent_keys(runs, keys) == ["method.name", "method.estimator", "trainer.limit_val_batches"]


def test_empty_folder_is_a_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cssl.report", str(tmp_path)], cwd=REPO, env=cli_env(), capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: no runs found under {tmp_path} (looked for summary.json)"


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_unreadable_summary_is_a_one_line_error(tmp_path: Path, content: str) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text(content)
    with pytest.raises(ConfigError, match=r"cannot read .*summary.json") as err:
        report.main([str(tmp_path)])
    assert "\n" not in str(err.value)


def test_only_evaluations_or_no_argument_are_errors(tmp_path: Path) -> None:
    write_linear(tmp_path / "eval", "x/checkpoints/last.ckpt", 0.5)
    with pytest.raises(ConfigError, match="no pretraining runs"):
        report.main([str(tmp_path)])
    with pytest.raises(ConfigError, match="--wandb-group"):
        report.main([])


def test_wandb_group_without_network_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ConfigError, match=r"^--wandb-group: cannot reach W&B at http://127.0.0.1:9") as err:
        report.main(["--wandb-group", "g"])
    assert "\n" not in str(err.value)


def test_wandb_group_gives_the_same_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeRun:
        def __init__(self, method: str, seed: int, knn: float, state: str = "finished") -> None:
            self.state, self.path = state, ["me", "cssl", f"{method}{seed}"]
            self.config = {"method": {"name": method}, "seed": seed, "run_dir": f"runs/{method}/{seed}", "_wandb": {}}
            self.summary_metrics = {"val/knn_top1": knn, "neg/w": 2.0, "_step": 9, "epoch": 1, "media": {"a": 1}}

        def scan_history(self) -> list:  # W&B's rows: a step key and what was logged then
            return [
                {"_step": 0, "trainer/global_step": 5, "train/loss": 1.0},
                {"trainer/global_step": 10, "val/knn_top1": 0.1},
            ]

    class FakeApi:
        queries: list = []

        def __init__(self, timeout: int) -> None:
            pass

        def runs(self, path: str, filters: dict) -> list:
            FakeApi.queries.append((path, filters))
            return [FakeRun("a", 0, 0.5), FakeRun("a", 1, 0.7), FakeRun("b", 0, 0.9), FakeRun("b", 1, 0.0, "crashed")]

    import wandb

    monkeypatch.setattr("cssl.runtime.loggers.reachable", lambda url, timeout=3.0: True)
    monkeypatch.setattr(wandb, "Api", FakeApi)
    report.main(["--wandb-group", "sweep_x", "--wandb-entity", "me", "--out", str(tmp_path), "--name", "w", "--all"])
    assert FakeApi.queries == [("me/cssl", {"group": "sweep_x"})]
    with (tmp_path / "w.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["method.name"], r["seeds"]) for r in rows] == [("a", "2"), ("b", "1")]  # crashed run left out
    assert float(rows[0]["knn_top1_mean"]) == pytest.approx(0.6)
    assert float(rows[0]["knn_top1_std"]) == pytest.approx(0.2 / math.sqrt(2))
    assert rows[0]["neg/w_mean"] == "2.0" and "_step_mean" not in rows[0] and "epoch_mean" not in rows[0]
    assert (tmp_path / "w_curves.png").read_bytes()[:8] == PNG  # from the mocked histories


@pytest.mark.slow
def test_multirun_writes_one_run_dir_per_job_and_the_report_reads_them(tmp_path: Path) -> None:
    sweep = tmp_path / "multirun" / "abl"
    proc = run_cli(
        "train.py",
        "-m",
        "method=simclr,dcl",
        "trainer.max_steps=1",
        "logger=none",
        "data.batch_size=16",
        "method.proj_hidden_dim=64",
        "trainer.progress_bar=false",
        "trainer.limit_val_batches=1",
        "data.bank_limit=64",
        "diagnostics.embedding=false",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in (0, 1)]
    assert [s["method"] for s in summaries] == ["simclr", "dcl"]
    assert {s["group"] for s in summaries} == {"multirun_abl"}  # one group for the whole multirun
    assert summaries[1]["tags"] == ["method=dcl", "data=digits", "estimator=dcl"]
    for s in summaries:
        metrics = s["metrics"]
        assert metrics["val/knn_top1"] == s["knn_top1"] and metrics["train/loss"] == s["train_loss"]
        assert "train/probe_loss" in metrics
    config = yaml.safe_load((sweep / "1" / "config.yaml").read_text())
    assert config["logger"]["group"] == "multirun_abl" and "estimator=dcl" in config["logger"]["tags"]

    result = report.build_report(report.load_local([sweep]))
    assert [row.values["method.name"] for row in result.rows] == ["dcl", "simclr"]
    assert result.plotted == ["method.name"]
    assert result.rows[0].stats["knn_top1"][0] == summaries[1]["knn_top1"]


def test_same_dir_matches_paths_from_another_working_directory() -> None:
    from cssl.runtime.checkpoint import run_dir_of

    assert report.same_dir(Path("runs/a/b"), "/elsewhere/runs/a/b")
    assert report.same_dir(Path("/elsewhere/runs/a/b"), "runs/a/b")
    assert not report.same_dir(Path("b"), "/elsewhere/b")  # one component is too ambiguous
    assert not report.same_dir(Path("/x/runs/a/c"), "/x/runs/a/b")
    assert run_dir_of("/x/run/checkpoints/last.ckpt") == Path("/x/run")
    assert run_dir_of("/x/run/step.ckpt") == Path("/x/run")
    assert run_dir_of("/x/run") == Path("/x/run")


def test_each_multirun_job_gets_its_own_wandb_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs of a multirun share a process: a new logger must not reuse the previous job's W&B run."""
    import wandb

    from cssl.runtime.loggers import build_logger

    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_MODE", "offline")
    ids, groups = [], []
    for job in ("0", "1"):
        logger = build_logger("wandb", tmp_path / job, group="multirun_x", tags=["method=simclr"], config={"job": job})
        ids.append(logger.experiment.id)
        groups.append(logger.experiment.group)
    wandb.finish()
    assert ids[0] != ids[1] and groups == ["multirun_x", "multirun_x"]
    assert all(len(list((tmp_path / job / "wandb").glob("offline-run-*"))) == 1 for job in ("0", "1"))


# -- baselines, columns, curves -------------------------------------------------------------------------
def _flat_runs(tmp_path: Path, specs: dict[tuple[str, str, int], dict[str, float]], backbone: str) -> Path:
    """Pretraining run dirs (method, estimator, seed) -> final logged metrics, on digits."""
    for (method, estimator, seed), metrics in specs.items():
        folder = write_run(
            tmp_path / "runs" / f"{method}_{estimator}_s{seed}",
            method=method,
            estimator=estimator,
            tau_plus=0.0,
            seed=seed,
            values=(metrics.get("knn", 0.5), 0.4, 2.0, 0.3),
        )
        config = yaml.safe_load((folder / "config.yaml").read_text())
        config["backbone"] = backbone
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        summary = json.loads((folder / "summary.json").read_text())
        summary["metrics"].update({k: v for k, v in metrics.items() if k != "knn"})
        (folder / "summary.json").write_text(json.dumps(summary))
    return tmp_path / "runs"


def _raw_pixel_knn(k: int = 20, t: float = 0.07) -> float:
    """Weighted kNN on the flattened normalised digits images, written independently with numpy."""
    import numpy as np

    from cssl.data.datamodules import build_datamodule

    data = build_datamodule("digits", train_split="labelled", train_transform=None)
    data.setup()

    def flat(split: str) -> tuple[np.ndarray, np.ndarray]:
        ds = data.sets[split]
        x = np.stack([ds[i][0].numpy() for i in range(len(ds))]).astype(np.float64) / 255.0
        x = ((x - 0.5) / 0.5).reshape(len(ds), -1)  # digits: mean = std = 0.5, already at 32 px
        return x / np.linalg.norm(x, axis=1, keepdims=True), np.array([int(ds[i][1]) for i in range(len(ds))])

    (bank, bank_y), (query, query_y) = flat("labelled"), flat("val")
    sim = query @ bank.T
    top = np.argsort(-sim, axis=1)[:, :k]
    votes = np.zeros((len(query), 10))
    for i in range(len(query)):
        np.add.at(votes[i], bank_y[top[i]], np.exp(sim[i, top[i]] / t))
    return float((votes.argmax(1) == query_y).mean())


def test_report_baselines_computed_once_then_read_from_the_cache(tmp_path: Path) -> None:
    from cssl import baselines

    runs = _flat_runs(
        tmp_path, {("simclr", "infonce", 0): {"knn": 0.6}, ("dcl", "dcl", 0): {"knn": 0.7}}, "timm:test_resnet"
    )
    cache = tmp_path / "cache"
    args = [str(runs), "--out", str(tmp_path / "out"), "--name", "b", "--baseline-cache", str(cache)]
    before = baselines.COMPUTED["count"]
    report.main(args)
    assert baselines.COMPUTED["count"] - before == 2  # random init and raw pixels, once for both methods
    stored = sorted(cache.glob("*.json"))
    assert len(stored) == 2
    mtimes = [p.stat().st_mtime_ns for p in stored]
    first = (tmp_path / "out" / "b.csv").read_text()
    report.main(args)
    assert baselines.COMPUTED["count"] - before == 2  # the second report read the cache
    assert [p.stat().st_mtime_ns for p in stored] == mtimes
    assert (tmp_path / "out" / "b.csv").read_text() == first

    with (tmp_path / "out" / "b.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["baseline"] for r in rows] == ["", "", "random-init timm:test_resnet", "raw pixels"]
    raw = rows[3]
    assert float(raw["knn_top1_mean"]) == pytest.approx(_raw_pixel_knn(), abs=1e-6)
    assert raw["seeds"] == "1" and raw["method.name"] == "" and raw["seed_list"] == "0"
    for row in rows[2:]:
        assert 0.5 < float(row["linear_top1_mean"]) <= float(row["linear_top1_best_mean"]) <= 1.0
    md = (tmp_path / "out" / "b.md").read_text()
    assert "| *raw pixels* | 1 |" in md and "| *random-init timm:test_resnet* | 1 |" in md
    assert "**" + f"{0.7:.4f}" + "**" in md  # the best run in bold, never a baseline
    assert report.main([*args, "--no-baselines"]) and baselines.COMPUTED["count"] - before == 2
    assert "raw pixels" not in (tmp_path / "out" / "b.md").read_text()


def test_digits_random_init_knn_is_high_and_deterministic() -> None:
    """The untrained ResNet-18 already separates digits (measured 0.939 at seed 0); same seed, same number."""
    from cssl import baselines

    config = {"data.name": "digits", "backbone": "resnet18", "seed": 0, "method.knn_k": 20, "method.knn_t": 0.07}
    spec = baselines.baseline_spec(config, "random_init")
    values = [baselines.knn_top1(baselines.baseline_features(spec), k=20, temperature=0.07) for _ in range(2)]
    assert values[0] == values[1]
    assert 0.92 <= values[0] <= 0.96
    other = baselines.baseline_spec({**config, "seed": 1}, "random_init")
    assert baselines.spec_hash(other) != baselines.spec_hash(spec)  # cached per seed
    assert baselines.spec_hash(baselines.baseline_spec({**config, "data.root": "/x"}, "random_init")) == (
        baselines.spec_hash(spec)  # where the data lives does not matter
    )


COLUMN_RUNS = {
    ("simclr", "infonce", 0): {"neg/effective_negatives": 30.0, "neg/pos_sim_mean": 0.9, "val/uniformity": -2.0},
    ("moco", "infonce", 0): {"neg/queue_age_mean": 5.0, "neg/bank_drift": 0.1, "neg/effective_negatives": 9.0},
    ("hcl", "hcl", 0): {"neg/hcl_weight_std": 0.4, "neg/hcl_weight_max": 3.0, "neg/effective_negatives": 8.0},
}


def _md_header(path: Path) -> list[str]:
    line = next(line for line in path.read_text().splitlines() if line.startswith("| method.name"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_report_columns_default_selected_and_all(tmp_path: Path) -> None:
    runs = _flat_runs(tmp_path, COLUMN_RUNS, "resnet18")
    out = tmp_path / "out"
    common = [str(runs), "--out", str(out), "--no-baselines", "--name"]
    report.main([*common, "d"])
    families = {report.family(r) for r in report.load_local([runs])}
    assert families == {"in_batch", "queue", "hcl"}
    default = ["method.name", "seeds", "knn_top1", "online_top1", "train_loss"]
    diagnostics = ["neg/queue_age_mean", "neg/bank_drift", "neg/hcl_weight_std", "neg/hcl_weight_max"]
    assert _md_header(out / "d.md") == default + diagnostics + ["neg/effective_negatives"]
    assert "more metrics in the CSV" in (out / "d.md").read_text()

    report.main([*common, "c", "--columns", "neg/pos_sim_mean,knn_top1"])
    assert _md_header(out / "c.md") == ["method.name", "seeds", "neg/pos_sim_mean", "knn_top1"]
    report.main([*common, "a", "--all"])
    everything = report.build_report(report.load_local([runs])).columns
    assert _md_header(out / "a.md") == ["method.name", "seeds", *everything]
    assert "val/uniformity" in everything and "images_per_second" in everything
    for name in ("d", "c", "a"):  # the CSV always has every metric
        header = (out / f"{name}.csv").read_text().splitlines()[0].split(",")
        assert [h[: -len("_mean")] for h in header if h.endswith("_mean")] == everything
    with pytest.raises(ConfigError, match="--columns: no metric neg/nope"):
        report.main([*common, "x", "--columns", "knn_top1,neg/nope"])
    with pytest.raises(ConfigError, match="exclude each other"):
        report.main([*common, "x", "--columns", "knn_top1", "--all"])


def test_family_of_a_method_without_negatives() -> None:
    run = report.Run("r", {"method.name": "byol"}, {}, metrics={"byol/cos": 0.9, "byol/z_std": 0.1})
    assert report.family(run) == "no_negatives"
    assert report.family(report.Run("r", {"method.name": "simclr"}, {}, metrics={})) == "in_batch"


def _write_metrics_csv(folder: Path, points: dict[int, float], online: dict[int, float]) -> None:
    """A Lightning CSVLogger file: one row per logging call, empty cells for what was not logged then."""
    (folder / "csv").mkdir()
    with (folder / "csv" / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "step", "train/loss", "val/knn_top1", "val/online_top1", "val/embedding"])
        for step in sorted(points):
            writer.writerow([0, step - 1, 3.0, "", "", ""])  # a training row
            writer.writerow([0, step, "", points[step], online.get(step, ""), ""])


def test_learning_curves_from_metrics_csv(tmp_path: Path) -> None:
    curves = {  # (method, seed) -> val/knn_top1 by step; seed 1 of dcl misses step 30
        ("simclr", 0): {10: 0.2, 20: 0.4, 30: 0.6},
        ("simclr", 1): {10: 0.4, 20: 0.5, 30: 0.7},
        ("dcl", 0): {10: 0.1, 20: 0.3, 30: 0.5},
        ("dcl", 1): {10: 0.3, 20: 0.2},
    }
    specs = {(m, "infonce" if m == "simclr" else "dcl", s): {} for m, s in curves}
    runs = _flat_runs(tmp_path, specs, "resnet18")
    for (method, seed), points in curves.items():
        estimator = "infonce" if method == "simclr" else "dcl"
        _write_metrics_csv(runs / f"{method}_{estimator}_s{seed}", points, {20: 0.1 * seed})
    result = report.build_report(report.load_local([runs]))
    assert result.rows[0].runs[0].curves["val/knn_top1"] == [(10, 0.1), (20, 0.3), (30, 0.5)]
    data = report.plot_curves(result, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG
    assert set(data) == {"val/knn_top1", "val/online_top1"}  # val/embedding has no numbers
    for (method, _), _points in curves.items():
        steps, means, stds = data["val/knn_top1"][f"method={method}"]
        by_step: dict[int, list[float]] = {}
        for (m, _s), pts in curves.items():
            if m == method:
                for step, value in pts.items():
                    by_step.setdefault(step, []).append(value)
        assert steps == sorted(by_step)
        for step, mean, std in zip(steps, means, stds, strict=True):
            values = by_step[step]
            expected = sum(values) / len(values)
            spread = math.sqrt(sum((v - expected) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0
            assert mean == pytest.approx(expected) and std == pytest.approx(spread)
    assert data["val/online_top1"]["method=simclr"] == (
        [20],
        [pytest.approx(0.05)],
        [pytest.approx(0.1 / math.sqrt(2))],
    )
    written = report.main([str(runs), "--out", str(tmp_path / "out"), "--no-baselines"])
    assert tmp_path / "out" / "report_curves.png" in written
    assert "![report_curves](report_curves.png)" in (tmp_path / "out" / "report.md").read_text()


def test_baseline_spec_keeps_the_options_a_data_module_passes_on_to_its_base_class():
    """lab takes its own options and hands the rest (image_size, ...) to ImageDataModule through **kwargs."""
    from cssl import baselines

    config = {"data.name": "lab", "data.image_size": 48, "data.train_size": 300, "data.batch_size": 64, "seed": 0}
    options = baselines.baseline_spec(config, "raw_pixels")["data_options"]
    assert options["image_size"] == 48 and options["train_size"] == 300
    assert "batch_size" not in options  # does not change the images


@pytest.mark.slow
def test_runs_started_from_weights_get_a_starting_weights_row(tmp_path: Path) -> None:
    """backbone_init: the report adds the starting weights under the runs' kNN protocol, equal to the same kNN
    computed here by hand from a backbone that loads the file with torch's own load_state_dict."""
    import torch

    from cssl import baselines
    from cssl.models.backbones import build_backbone

    torch.manual_seed(7)
    weights = build_backbone("timm:test_resnet", cifar_stem=False).state_dict()
    init = tmp_path / "start.pth"
    torch.save(weights, init)
    runs = _flat_runs(tmp_path, {("simclr", "infonce", 0): {"knn": 0.6}}, "timm:test_resnet")
    for config in runs.rglob("config.yaml"):
        cfg = yaml.safe_load(config.read_text())
        cfg["backbone_init"] = str(init)
        config.write_text(yaml.safe_dump(cfg))
    report.main([str(runs), "--out", str(tmp_path / "out"), "--name", "s", "--baseline-cache", str(tmp_path / "c")])
    with (tmp_path / "out" / "s.csv").open() as handle:
        rows = {r["baseline"]: r for r in csv.DictReader(handle)}
    assert "starting weights start.pth" in rows, list(rows)

    net = build_backbone("timm:test_resnet", cifar_stem=False)
    net.load_state_dict(weights)
    spec = baselines.baseline_spec({"data.name": "digits", "seed": 0}, "raw_pixels")
    data = baselines._data(spec, None)
    expected = baselines.knn_top1(baselines.encoder_features(net.eval(), data), k=20, temperature=0.07)
    assert float(rows["starting weights start.pth"]["knn_top1_mean"]) == pytest.approx(expected, abs=1e-6)
    random_init = float(rows["random-init timm:test_resnet"]["knn_top1_mean"])
    assert float(rows["starting weights start.pth"]["knn_top1_mean"]) != random_init  # other weights, other row
