"""Behaviour pinned across refactorings: for every method (and SimCLR with FNC + ring + curriculum), three
training steps from a fixed seed must give the same weights, buffers (queue, bank, target) and logged metrics
as the snapshot recorded before the method base was reshaped (tests/snapshots/behaviour.json).

Each tensor is pinned by the SHA-256 of its fp32 bytes (exact equality on this machine) plus its float64 sum
and sum of squares; when a hash differs the test reports the relative difference of those sums so a
reviewer sees how far the behaviour moved. Metrics are compared exactly (to the CSV's printed precision).

Regenerate only on purpose: ``CSSL_RECORD_SNAPSHOT=1 python -m pytest tests/test_behaviour_snapshot.py``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import QUICK, compose

SNAPSHOT = Path(__file__).parent / "snapshots" / "behaviour.json"

MOCHI = [
    "method=mochi",
    "method.queue_size=256",
    "method.n_hard=64",
    "method.s=32",
    "method.s_prime=16",
    "method.mochi_warmup_epochs=0",
]
CASES: dict[str, list[str]] = {
    "simclr": ["method=simclr"],
    "dcl": ["method=dcl"],
    "hcl": ["method=hcl"],
    "moco": ["method=moco", "method.queue_size=256"],
    "mochi": MOCHI,
    "adco": ["method=adco", "method.bank_size=256"],
    "byol": ["method=byol", "method.pred_hidden_dim=64"],
    "simclr_fnc_ring_curriculum": [
        "method=simclr",
        "method.estimator=hcl",
        "method.beta=1.0",
        "method.tau_plus=0.1",
        "method.fnc=eliminate",
        "method.fnc_support_views=1",
        "method.ring_outer=0.5",
        "method.curriculum=linear",
    ],
    "hcl_beta_anneal": ["method=hcl", "method.beta_anneal=true"],
    "moco_fnc_attract_ring": [
        "method=moco",
        "method.queue_size=256",
        "method.symmetric=true",
        "method.fnc=attract",
        "method.fnc_support_views=1",
        "method.ring_outer=0.5",
    ],
    "mochi_curriculum": [*MOCHI, "method.curriculum=sqrt"],
    "adco_fnc_eliminate": ["method=adco", "method.bank_size=256", "method.fnc=eliminate", "method.ring_outer=0.8"],
}


def run_three_steps(name: str, tmp_path: Path) -> dict:
    from cssl.pretrain import pretrain

    run_dir = tmp_path / name
    overrides = [
        *(a for a in QUICK if not a.startswith("logger=")),
        "logger=csv",
        *CASES[name],
        "seed=0",
        "data.num_workers=0",
        "trainer.max_steps=3",
        "trainer.log_every_n_steps=1",
        "diagnostics.every_n_steps=1",
        f"run_dir={run_dir}",
    ]
    summary = pretrain(compose("train", overrides))
    ckpt = torch.load(Path(summary["checkpoint"]), map_location="cpu", weights_only=False)
    tensors = {}
    for key, value in sorted(ckpt["state_dict"].items()):
        if not torch.is_tensor(value) or key.startswith(("train_acc", "val_acc")):
            continue
        v = value.detach().to(torch.float32).contiguous()
        v64 = v.double()
        tensors[key] = {
            "sha256": hashlib.sha256(v.numpy().tobytes()).hexdigest(),
            "sum": float(v64.sum()),
            "sumsq": float((v64 * v64).sum()),
            "shape": list(v.shape),
        }
    metrics: dict[str, dict[str, str]] = {}
    with open(run_dir / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            step = row.get("step", "")
            for key, value in row.items():
                if key not in ("step", "epoch") and value not in ("", None):
                    metrics.setdefault(key, {})[step] = value
    return {"tensors": tensors, "metrics": metrics, "global_step": summary["global_step"]}


#: The cases of the quick tier (-m "not slow"): every registered method once, each with the parts it composes
#: (HCL with FNC, ring and curriculum on SimCLR; MoCo with attraction and the ring; MoChi with the curriculum;
#: AdCo with elimination); the plain cases run in the full suite.
QUICK_CASES = (
    "dcl",
    "byol",
    "simclr_fnc_ring_curriculum",
    "moco_fnc_attract_ring",
    "mochi_curriculum",
    "adco_fnc_eliminate",
)


@pytest.mark.parametrize(
    "name", [name if name in QUICK_CASES else pytest.param(name, marks=pytest.mark.slow) for name in CASES]
)
def test_three_steps_equal_the_snapshot(name: str, tmp_path: Path) -> None:
    got = run_three_steps(name, tmp_path)
    if os.environ.get("CSSL_RECORD_SNAPSHOT") == "1":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        recorded = json.loads(SNAPSHOT.read_text()) if SNAPSHOT.exists() else {}
        recorded[name] = got
        SNAPSHOT.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        return
    want = json.loads(SNAPSHOT.read_text())[name]
    assert got["global_step"] == want["global_step"] == 3
    assert sorted(got["tensors"]) == sorted(want["tensors"]), "state-dict keys changed"
    moved = []
    for key, w in want["tensors"].items():
        g = got["tensors"][key]
        assert g["shape"] == w["shape"], key
        if g["sha256"] != w["sha256"]:
            rel = abs(g["sum"] - w["sum"]) / max(abs(w["sum"]), 1e-12)
            moved.append(f"{key}: sum rel diff {rel:.2e}, sumsq {g['sumsq']!r} vs {w['sumsq']!r}")
    assert not moved, "tensors differ from the snapshot:\n" + "\n".join(moved)
    assert sorted(got["metrics"]) == sorted(want["metrics"]), "logged metric names changed"
    for key, steps in want["metrics"].items():
        assert got["metrics"][key] == steps, key
