"""End-to-end runs of the two entry points, as a user runs them."""

import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import (
    QUICK,
    assert_same_training_state,
    check_ok,
    cli_env,
    interrupted_copy,
    load_checkpoint,
    run_cli,
    run_inprocess,
)


@pytest.mark.slow
def test_pretrain_then_linear_and_knn_eval(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train.py", *QUICK, "logger=csv", "trainer.max_steps=4", f"run_dir={run}")
    check_ok(proc)
    summary = json.loads((run / "summary.json").read_text())
    for key in (
        "method",
        "global_step",
        "epochs",
        "train_loss",
        "online_top1",
        "knn_top1",
        "images_per_second",
        "wall_seconds",
    ):
        assert key in summary
    assert summary["method"] == "simclr" and summary["global_step"] == 4
    assert 0 <= summary["online_top1"] <= 1 and 0 <= summary["knn_top1"] <= 1
    assert math.isfinite(summary["train_loss"]) and summary["images_per_second"] > 0
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "csv" / "metrics.csv").read_text().startswith(("epoch", "step", "train", "val", "lr"))

    lin = tmp_path / "lin"
    proc = run_cli(
        "linear_eval.py",
        f"ckpt={run}",
        "logger=none",
        "trainer.progress_bar=false",
        "trainer.max_epochs=2",
        "data.batch_size=64",
        f"run_dir={lin}",
    )
    check_ok(proc)
    result = json.loads((lin / "summary.json").read_text())
    assert 0 <= result["top1"] <= result["top5"] <= 1 and result["epochs"] == 2

    knn = tmp_path / "knn"
    check_ok(
        run_cli(
            "linear_eval.py", f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "mode=knn", "logger=none", f"run_dir={knn}"
        )
    )
    result = json.loads((knn / "summary.json").read_text())
    assert result["mode"] == "knn" and 0.3 < result["top1"] <= result["top5"] <= 1  # digits: far above chance


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    common = (
        *QUICK,
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "trainer.check_val_every_n_epoch=1",
        "checkpoint.every_n_epochs=1",
        "seed=3",
    )
    straight = tmp_path / "straight"
    check_ok(run_cli("train.py", *common, f"run_dir={straight}"))
    # an interrupted run: only the checkpoint written after epoch 1 survives (resume=auto picks the newest)
    resumed = tmp_path / "resumed"
    interrupted_copy(straight, resumed)
    proc = run_cli("train.py", *common, f"run_dir={resumed}", "resume=auto")
    check_ok(proc)
    a, b = (load_checkpoint(run / "checkpoints" / "last.ckpt") for run in (straight, resumed))
    assert a["global_step"] == 6
    assert_same_training_state(a, b)
    # and the interrupted checkpoint really was a different point of training
    mid = load_checkpoint(straight / "checkpoints" / "epoch0000.ckpt")
    assert mid["global_step"] == 3
    first = next(k for k in a["state_dict"] if k.startswith("backbone.") and k.endswith("weight"))
    assert not torch.equal(mid["state_dict"][first], a["state_dict"][first])


@pytest.mark.slow
def test_wandb_logs_offline_without_an_api_key(tmp_path):
    run = tmp_path / "run"
    proc = run_cli(
        "train.py",
        *QUICK[1:],
        "method=hcl",  # also the command-line run of an HCL method
        "logger=wandb",
        "trainer.max_steps=2",
        f"run_dir={run}",
        env=cli_env(HOME=str(tmp_path)),
    )
    check_ok(proc)
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))
    assert json.loads((run / "summary.json").read_text())["method"] == "hcl"


@pytest.mark.slow
def test_a_wandb_failure_does_not_stop_training(tmp_path):
    # online mode with no API key and no network: W&B cannot start; training must finish anyway
    run = tmp_path / "run"
    env = cli_env(HOME=str(tmp_path), WANDB_MODE="online", WANDB_BASE_URL="http://127.0.0.1:9", WANDB_INIT_TIMEOUT="5")
    proc = run_cli(
        "train.py", *QUICK[1:], "method=dcl", "logger=wandb", "trainer.max_steps=2", f"run_dir={run}", env=env
    )
    check_ok(proc)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 2 and summary["method"] == "dcl" and summary["estimator"] == "dcl"
    assert "W&B logging failed" in proc.stderr + proc.stdout


def _bad_checkpoints(tmp_path: Path) -> dict[str, Path]:
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    tampered = tmp_path / "tampered.ckpt"
    torch.save({"state_dict": {}, "cssl": {}, "payload": _Exploit(tmp_path / "pwned")}, tampered)
    return {"garbage": garbage, "foreign": foreign, "tampered": tampered, "missing": tmp_path / "nope.ckpt"}


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


BAD_TRAIN = [
    (("backbone=resnet7",), "backbone"),
    (("backbone=timm:not_a_model",), "timm"),
    (("method.temperature=0",), "temperature"),
    (("method.temperature=-0.5",), "temperature"),
    (("data.batch_size=1",), "data.batch_size"),
    (("data.batch_size=abc",), "data.batch_size"),
    (("data.batch_size=2.5",), "data.batch_size"),
    (("data=cifar10", "data.root=/nonexistent/cssl"), "data.root"),
    (("data=stl10", "data.root=/nonexistent/cssl"), "data.root"),
    (("method=dcl", "method.tau_plus=1.0"), "tau_plus"),
    (("method=hcl", "method.beta=-1"), "beta"),
    (("optimizer.name=adagrad",), "optimizer.name"),
    (("seed=-1",), "seed"),
]


@pytest.mark.parametrize(("args", "word"), BAD_TRAIN, ids=[" ".join(a) for a, _ in BAD_TRAIN])
def test_bad_input_stops_with_one_line(args, word, tmp_path):
    code, err = run_inprocess("train", ["logger=none", f"run_dir={tmp_path / 'run'}", *args])
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and word in lines[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("script", "args", "word"),
    [
        ("train.py", ("method=nope",), "method"),
        ("train.py", ("data=nope",), "data"),
        ("linear_eval.py", ("data=nope",), "data"),
        ("train.py", ("method.temperature=0",), "temperature"),
        ("train.py", ("data=cifar10", "data.root=/nonexistent/cssl"), "data.root"),
    ],
)
def test_bad_input_on_the_command_line_prints_no_traceback(script, args, word, tmp_path):
    proc = run_cli(script, "logger=none", f"run_dir={tmp_path / 'run'}", *args, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and word in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("kind", ["missing", "garbage", "foreign", "tampered"])
@pytest.mark.parametrize("entry", ["linear", "train"])
def test_bad_checkpoints_are_refused(kind, entry, tmp_path):
    path = _bad_checkpoints(tmp_path)[kind]
    key = "ckpt" if entry == "linear" else "resume"
    code, err = run_inprocess(entry, [f"{key}={path}", "logger=none", f"run_dir={tmp_path / 'run'}"])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0], err
    assert not (tmp_path / "pwned").exists()  # nothing in the file ran


def test_tampered_checkpoint_on_the_command_line(tmp_path):
    path = _bad_checkpoints(tmp_path)["tampered"]
    proc = run_cli("linear_eval.py", f"ckpt={path}", "logger=none", f"run_dir={tmp_path / 'run'}", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "refused" in proc.stderr
    assert not (tmp_path / "pwned").exists()


def test_pickle_exploit_would_run_if_unpickled(tmp_path):
    # guards the tests above: the tampered file really is dangerous to a plain unpickler
    path = _bad_checkpoints(tmp_path)["tampered"]
    torch.load(path, weights_only=False)
    assert (tmp_path / "pwned").exists()
