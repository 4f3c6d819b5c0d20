"""The kNN grid (cssl/eval/knn.py knn_grid) against separate kNN runs, the presets, and mode=knn end to end."""

import json

import pytest
import torch
import torch.nn.functional as F

from cssl.eval.knn import KNN_PRESETS, knn_grid, knn_predict
from tests.conftest import QUICK, compose, run_inprocess, train_inprocess


def reference_knn(query, query_y, bank, bank_y, num_classes, k, t):
    """One (k, t) as its own run, written out independently: a full sort of the similarities per query."""
    q, b = F.normalize(query, dim=1), F.normalize(bank, dim=1)
    top1 = top5 = 0
    for i in range(q.shape[0]):
        sim = (b @ q[i]).tolist()
        order = sorted(range(len(sim)), key=lambda j: -sim[j])[:k]
        scores = [0.0] * num_classes
        for j in order:
            scores[int(bank_y[j])] += float(torch.tensor(sim[j] / t).exp())
        ranked = sorted(range(num_classes), key=lambda c: -scores[c])
        top1 += ranked[0] == int(query_y[i])
        top5 += int(query_y[i]) in ranked[:5]
    return top1 / q.shape[0], top5 / q.shape[0]


def test_grid_equals_separate_runs():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(7, 16, generator=g)
    bank_y = torch.randint(0, 7, (300,), generator=g)
    query_y = torch.randint(0, 7, (90,), generator=g)
    bank = centres[bank_y] + 1.5 * torch.randn(300, 16, generator=g)
    query = centres[query_y] + 1.5 * torch.randn(90, 16, generator=g)
    ks, ts = [1, 10, 20, 100, 200], [0.02, 0.07, 0.1, 0.5]
    grid = knn_grid(query, query_y, bank, bank_y, 7, ks=ks, temperatures=ts, chunk=32)
    assert set(grid) == {(k, t) for k in ks for t in ts}
    for (k, t), (top1, top5) in grid.items():
        ref1, ref5 = reference_knn(query, query_y, bank, bank_y, 7, k, t)
        assert top1 == pytest.approx(ref1, abs=1e-9)
        if k >= 100:  # with fewer neighbours some classes score 0, and the order of those ties is arbitrary
            assert top5 == pytest.approx(ref5, abs=1e-9)
        # and the single-setting function that the kNN monitor uses
        single = knn_predict(query, bank, bank_y, 7, k=k, temperature=t).argmax(1)
        assert top1 == pytest.approx(float((single == query_y).float().mean()), abs=1e-6)


def test_presets_compose_and_name_their_cell():
    from cssl.evaluate import knn_settings

    for name, preset in KNN_PRESETS.items():
        ks, ts, main = knn_settings(compose("linear_eval", ["mode=knn", f"knn.preset={name}"]))
        assert (ks, ts) == (preset["k"], preset["t"]) and main[0] in ks and main[1] in ts
    assert knn_settings(compose("linear_eval", ["knn.preset=dino"]))[:2] == ([10, 20, 100, 200], [0.07])
    assert knn_settings(compose("linear_eval", ["knn.preset=moco_demo"]))[2] == (200, 0.1)
    assert knn_settings(compose("linear_eval", ["knn.preset=lightly_cifar"]))[2] == (200, 0.1)
    assert knn_settings(compose("linear_eval", []))[:2] == ([20], [0.07])  # the defaults


@pytest.mark.parametrize(
    "args, word",
    [
        (("knn.preset=solo",), "knn.preset must be one of"),
        (("knn.preset=dino", "knn.k=5"), "knn.preset=dino sets k and t"),
        (("knn.k=[10,0]",), "knn.k must be integers >= 1"),
        (("knn.t=-1",), "knn.t must be numbers > 0"),
    ],
)
def test_bad_knn_options_are_one_line_errors(args, word, tmp_path):
    code, err = run_inprocess(
        "linear_eval", ["ckpt=/nonexistent", "mode=knn", *args, "logger=none", f"run_dir={tmp_path}"]
    )
    assert code == 2 and word in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_knn_mode_runs_the_grid_once_and_matches_single_runs(tmp_path):
    pre = tmp_path / "pre"
    train_inprocess(*QUICK, "trainer.max_steps=1", f"run_dir={pre}")
    fast = ("logger=none", "data.bank_limit=null", f"ckpt={pre}")
    code, err = run_inprocess(
        "linear_eval", [*fast, "mode=knn", "knn.k=[10,20]", "knn.t=[0.07,0.5]", f"run_dir={tmp_path / 'g'}"]
    )
    assert code == 0, err
    grid = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert set(grid["grid"]) == {"k10_t0.07", "k10_t0.5", "k20_t0.07", "k20_t0.5"}
    best = max(grid["grid"].values(), key=lambda v: v["top1"])["top1"]
    assert grid["best"]["top1"] == best == grid["top1"]  # no preset, several cells: the best is reported
    code, err = run_inprocess("linear_eval", [*fast, "mode=knn", "knn.k=20", "knn.t=0.5", f"run_dir={tmp_path / 's'}"])
    assert code == 0, err
    single = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert single["top1"] == grid["grid"]["k20_t0.5"]["top1"] and single["top5"] == grid["grid"]["k20_t0.5"]["top5"]
