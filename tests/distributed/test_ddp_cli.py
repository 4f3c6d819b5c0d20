"""End to end: `python train.py trainer=ddp trainer.devices=2 trainer.accelerator=cpu ...` on two gloo
processes that Lightning launches, then `resume=auto` on the same run dir, still under DDP.

Both runs share one module fixture (each costs two interpreter start-ups); the tests check its parts.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from cssl.data import build_datamodule
from cssl.data.augment import EvalTransform
from cssl.eval.knn import knn_predict
from cssl.models.backbones import build_backbone
from tests.conftest import load_checkpoint, run_cli
from tests.interrupt import clean_env

pytestmark = pytest.mark.slow  # whole training runs in subprocesses

BATCH = 16
BANK = 400  # even, so DistributedSampler splits the kNN bank without padding duplicates
COMMAND = (
    "trainer=ddp",
    "trainer.devices=2",
    "trainer.accelerator=cpu",
    "data=digits",
    f"data.batch_size={BATCH}",
    "logger=none",
    "trainer.progress_bar=false",
    f"data.bank_limit={BANK}",
    "diagnostics.embedding=false",
    "backbone=timm:test_resnet",
)


def _train(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("train.py", *COMMAND, f"run_dir={run_dir}", *extra, env=clean_env(), timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("ddp")
    run_dir = root / "run"
    first = _train(run_dir, "trainer.max_steps=3")
    assert first.returncode == 0, first.stderr[-3000:]
    after_first = {
        "summary": json.loads((run_dir / "summary.json").read_text()),
        "files": sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()),
        "ckpt": load_checkpoint(run_dir / "checkpoints" / "last.ckpt"),
    }
    second = _train(run_dir, "trainer.max_steps=6", "resume=auto")
    assert second.returncode == 0, second.stderr[-3000:]
    return {
        "root": root,
        "run_dir": run_dir,
        "first": first,
        "second": second,
        "after_first": after_first,
        "summary": json.loads((run_dir / "summary.json").read_text()),
        "ckpt": load_checkpoint(run_dir / "checkpoints" / "last.ckpt"),
    }


def test_two_ranks_write_one_summary_one_checkpoint_one_config(runs: dict) -> None:
    first = runs["after_first"]
    assert first["summary"]["global_step"] == 3
    summaries = [f for f in first["files"] if f.endswith("summary.json")]
    assert summaries == ["run/summary.json"]
    assert [f for f in first["files"] if f.endswith(".ckpt")] == ["run/checkpoints/last.ckpt"]
    assert [f for f in first["files"] if f.endswith("config.yaml")] == ["run/config.yaml"]
    # rank 1 was relaunched into the same run dir (its Hydra job log sits next to rank 0's), nowhere else
    assert all(f.startswith("run/") for f in first["files"])
    assert "run/train_ddp_process_1.log" in first["files"]
    for proc in (runs["first"], runs["second"]):
        assert "Traceback" not in proc.stderr and "error:" not in proc.stderr
        assert "All distributed processes registered. Starting with 2 processes" in proc.stdout + proc.stderr


def test_rng_states_of_both_ranks_are_gathered_into_the_checkpoint(runs: dict) -> None:
    ckpt = runs["after_first"]["ckpt"]
    states = [v for k, v in ckpt["callbacks"].items() if k.startswith("RNGState")]
    assert len(states) == 1 and len(states[0]["per_rank"]) == 2
    rank0, rank1 = states[0]["per_rank"]
    for state in (rank0, rank1):
        assert state["torch"].dtype == torch.uint8 and state["torch"].numel() > 0
    # each rank draws its own augmentations: the ranks' generators are in different states
    assert not torch.equal(rank0["torch"], rank1["torch"])
    assert not torch.equal(rank0["numpy"]["keys"], rank1["numpy"]["keys"])


def test_learning_rate_is_scaled_by_the_global_batch(runs: dict) -> None:
    groups = runs["after_first"]["ckpt"]["optimizer_states"][0]["param_groups"]
    # optimizer.lr 1.0 (train.yaml), scale_lr: lr * batch * world * accumulate / 256; the probe keeps its own
    assert groups[0]["initial_lr"] == pytest.approx(1.0 * BATCH * 2 * 1 / 256)
    assert groups[-1]["initial_lr"] == pytest.approx(0.1)


def test_resume_auto_continues_under_ddp(runs: dict) -> None:
    assert runs["summary"]["global_step"] == 6
    assert runs["ckpt"]["global_step"] == 6
    assert "Restoring states from the checkpoint path" in runs["second"].stdout + runs["second"].stderr
    assert sorted(str(p.relative_to(runs["root"])) for p in runs["root"].rglob("*.ckpt")) == [
        "run/checkpoints/last.ckpt"
    ]
    assert len(list(runs["root"].rglob("summary.json"))) == 1


def test_validation_metrics_cover_both_ranks_halves(runs: dict) -> None:
    """kNN top-1 and probe top-1 of the summary equal those recomputed here on the whole held-out split from
    the final checkpoint: a metric of rank 0's half alone would (almost surely) differ."""
    ckpt, summary = runs["ckpt"], runs["summary"]
    meta = ckpt["cssl"]
    backbone = build_backbone(meta["backbone"], cifar_stem=meta["cifar_stem"])
    state = ckpt["state_dict"]
    backbone.load_state_dict({k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")})
    probe = torch.nn.Linear(meta["num_features"], 10)
    probe.load_state_dict({k[len("probe.") :]: v for k, v in state.items() if k.startswith("probe.")})
    backbone.eval()

    data = build_datamodule("digits", batch_size=BATCH, bank_limit=BANK)
    data.setup()
    transform = EvalTransform(data.image_size, center_crop=data.center_crop_eval, mean=data.mean, std=data.std)

    def features(dataset) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([dataset[i][0] for i in range(len(dataset))])
        y = torch.stack([torch.as_tensor(dataset[i][1]) for i in range(len(dataset))])
        with torch.no_grad():
            return backbone(transform(x)), y

    bank, bank_y = features(data.bank_dataset())
    query, query_y = features(data.sets["val"])
    assert len(bank_y) == BANK and len(query_y) % 2 == 0  # no DistributedSampler padding on either split
    scores = knn_predict(
        query, bank, bank_y, 10, k=meta["config"]["method"]["knn_k"], temperature=meta["config"]["method"]["knn_t"]
    )
    knn_top1 = (scores.argmax(1) == query_y).float().mean().item()
    with torch.no_grad():
        probe_top1 = (probe(query).argmax(1) == query_y).float().mean().item()
    assert summary["knn_top1"] == pytest.approx(knn_top1, abs=1e-6)
    assert summary["online_top1"] == pytest.approx(probe_top1, abs=1e-6)
