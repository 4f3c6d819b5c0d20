"""Evaluation results in the pretraining run's W&B summary, offline (no network): the checkpoint records
the run id, and linear_eval.py writes an offline run with that id whose records hold the eval/... keys."""

import json
import struct
from pathlib import Path

import pytest
import torch

from cssl.eval.results import eval_metrics
from tests.conftest import QUICK, run_inprocess, train_inprocess


def wandb_records(path: Path):
    """The records of a W&B ``.wandb`` file, read independently of wandb's writer: a 7-byte header
    (``:W&B``, magic, version), then LevelDB log blocks of 32 KiB whose chunks (crc32c, length, type:
    1 full, 2 first, 3 middle, 4 last) hold serialised ``Record`` protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's tail is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def offline_summary(run_dir: Path, run_id: str) -> dict:
    """The summary updates of the offline runs with ``run_id`` under ``run_dir/wandb``."""
    found = sorted(run_dir.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert found, f"no offline run {run_id} under {run_dir}"
    summary = {}
    for path in found:
        for record in wandb_records(path):
            if record.WhichOneof("record_type") == "summary":
                for item in record.summary.update:
                    summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return summary


def test_eval_metric_names():
    knn = {"mode": "knn", "top1": 0.5, "top5": 0.9, "grid": {"k20_t0.07": {"top1": 0.5, "top5": 0.9}}}
    assert eval_metrics(knn) == {
        "eval/knn_top1": 0.5,
        "eval/knn_top5": 0.9,
        "eval/knn_top1_k20_t0.07": 0.5,
        "eval/knn_top5_k20_t0.07": 0.9,
    }
    linear = {"mode": "linear", "init": "pretrained", "top1": 0.7, "top1_best": 0.8, "subset": None}
    assert eval_metrics(linear) == {"eval/linear_top1": 0.7, "eval/linear_top1_best": 0.8}
    random = {"mode": "finetune", "init": "random", "top1": 0.3, "subset": {"tag": "frac0.01"}}
    assert eval_metrics(random) == {"eval/finetune_random_top1_frac0.01": 0.3}


@pytest.fixture(scope="module")
def offline_pretrain(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    run = tmp_path_factory.mktemp("pretrain_wandb")
    args = [a for a in QUICK if a != "logger=none"]
    train_inprocess(*args, "logger=wandb", "trainer.max_steps=1", f"run_dir={run}")
    yield run
    mp.undo()


@pytest.mark.slow
def test_checkpoint_records_the_run_and_evaluations_write_eval_keys(offline_pretrain, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    record = torch.load(offline_pretrain / "checkpoints" / "last.ckpt", weights_only=False)["cssl"]["wandb"]
    assert record["mode"] == "offline" and record["id"] and Path(record["dir"]).is_dir()
    fast = ["logger=none", "trainer.progress_bar=false", "data.batch_size=32", f"ckpt={offline_pretrain}"]
    code, err = run_inprocess(
        "linear_eval", [*fast, "trainer.max_epochs=1", "trainer.limit_train_batches=2", f"run_dir={tmp_path / 'lin'}"]
    )
    assert code == 0, err
    code, err = run_inprocess(
        "linear_eval", [*fast, "mode=knn", "knn.k=[10,20]", "knn.t=0.07", f"run_dir={tmp_path / 'knn'}"]
    )
    assert code == 0, err
    linear = json.loads((tmp_path / "lin" / "summary.json").read_text())
    got = offline_summary(tmp_path / "lin", record["id"])
    assert got["eval/linear_top1"] == pytest.approx(linear["top1"])
    assert got["eval/linear_top1_best"] == pytest.approx(linear["top1_best"])
    knn = json.loads((tmp_path / "knn" / "summary.json").read_text())
    got = offline_summary(tmp_path / "knn", record["id"])
    assert "eval/knn_top1_k20_t0.07" in got, (got, err[-3000:])
    assert got["eval/knn_top1_k20_t0.07"] == pytest.approx(knn["grid"]["k20_t0.07"]["top1"])
    assert "eval/knn_top1_k10_t0.07" in got and got["eval/knn_top1"] == pytest.approx(knn["top1"])


@pytest.mark.slow
def test_a_logging_failure_is_one_warning(offline_pretrain, tmp_path, monkeypatch):
    import wandb

    def broken(*args, **kwargs):
        raise RuntimeError("server says no")

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(wandb, "init", broken)
    code, err = run_inprocess(
        "linear_eval", ["logger=none", "mode=knn", f"ckpt={offline_pretrain}", f"run_dir={tmp_path}"]
    )
    assert code == 0, err
    assert "warning: the results were not written to the training's W&B run" in err and "server says no" in err
    assert (tmp_path / "summary.json").is_file()


def test_online_resumes_the_training_run_by_id(tmp_path, monkeypatch):
    """Online (mocked: no network here): W&B's resume of the recorded id, the keys into its summary."""
    import wandb

    from cssl.runtime import loggers

    calls = {}

    class FakeRun:
        dir = str(tmp_path / "wandb" / "run-x" / "files")
        url = "https://wandb.example/run/abc"

        def __init__(self):
            self.summary = {}

        def finish(self):
            calls["finished"] = dict(self.summary)

    def fake_init(**kwargs):
        calls["init"] = kwargs
        return FakeRun()

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(loggers, "wandb_mode", lambda requested="auto": "online")
    monkeypatch.setattr(wandb, "init", fake_init)
    monkeypatch.setattr(wandb, "teardown", lambda: None)
    record = {"id": "abc", "project": "p", "entity": "e", "mode": "online", "dir": "x"}
    line = loggers.write_eval_summary(record, {"eval/linear_top1": 0.5}, tmp_path)
    init = calls["init"]
    assert (init["id"], init["project"], init["entity"], init["resume"], init["mode"]) == (
        "abc",
        "p",
        "e",
        "allow",
        "online",
    )
    assert calls["finished"] == {"eval/linear_top1": 0.5} and "wandb.example" in line
    assert loggers.write_eval_summary(None, {"eval/linear_top1": 0.5}, tmp_path) is None  # no run recorded
