"""FNC, the ring and the curriculum through the methods, with every pool: in-batch (SimCLR), queue (MoCo,
MoChi), adversarial bank (AdCo); the spec's vectors where a pool has them; config defaults, one-line errors,
support views from the data pipeline, one short CLI run, and the report's columns for the new sweeps."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml
from omegaconf import OmegaConf

from cssl import report
from cssl.contrastive import info_nce, nt_xent
from cssl.contrastive.adversarial import bank_loss_and_gradient
from cssl.contrastive.selection import detect_false_negatives
from cssl.core.errors import ConfigError
from cssl.methods import method_class
from cssl.methods.moco import MoChi, MoCo
from cssl.methods.simclr import SimCLR
from cssl.models.optim import OptimSettings
from cssl.pretrain import pretrain_views
from tests.conftest import QUICK, REPO, StandIn, check_ok, compose, run_cli, run_inprocess
from tests.contrastive.test_selection import KEYS, QUEUE, SUP, SUPK, Z1, Z2, Q, loop_detect, loop_ring, unit
from tests.methods.adco_helpers import B, tiny_adco


def simclr(**kwargs) -> SimCLR:
    torch.manual_seed(0)
    options = {"temperature": 0.5, "proj_hidden_dim": 16, "proj_output_dim": 4, **kwargs}
    return SimCLR(StandIn(), num_classes=3, batch_size=3, optim=OptimSettings(), **options)


def moco(cls=MoCo, **kwargs) -> MoCo:
    torch.manual_seed(0)
    options = {"temperature": 0.5, "queue_size": 10, "proj_hidden_dim": 16, "proj_output_dim": 4, "key_bn": "none"}
    model = cls(StandIn(), num_classes=3, batch_size=2, optim=OptimSettings(), **{**options, **kwargs})
    model.queue.queue.copy_(unit(QUEUE))
    return model


def halfway(model, step: int = 25, total: int = 100) -> None:
    model._trainer = SimpleNamespace(estimated_stepping_batches=total, global_step=step, logger=None)


# -- in-batch pool ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, support, expected",
    [
        ({"fnc": "attract", "fnc_top_k": 2, "fnc_threshold": 0.8}, False, 1.113079),  # F1-S0
        ({"fnc": "attract", "fnc_top_k": 2, "fnc_threshold": 0.8}, True, 1.338777),  # F1
        ({"fnc": "eliminate", "fnc_top_k": 2, "fnc_threshold": 0.8}, True, 0.413868),
        ({"fnc": "eliminate", "fnc_top_k": 100, "fnc_threshold": -1.0}, True, 0.0),  # F3-edge
        ({"ring_outer": 0.75, "ring_inner": 0.34}, False, 0.653351),  # R2
        ({"ring_outer": 0.1}, False, 0.0),  # R2 edge: every ring empty
    ],
)
def test_simclr_in_batch_pool_gives_the_spec_values(options, support, expected):
    model = simclr(**options)
    if support:  # the spec's support views stand in for the encoder's embeddings of extra views
        model.negatives.support_embeddings = lambda encode: torch.tensor(SUP, dtype=torch.float64)
    z1 = torch.tensor(Z1, dtype=torch.float64, requires_grad=True)
    z2 = torch.tensor(Z2, dtype=torch.float64, requires_grad=True)
    if expected == 0.0 and "ring_outer" in options:
        with pytest.warns(UserWarning, match="every ring is empty"):
            loss = model.selected_loss(z1, z2)
    else:
        loss = model.selected_loss(z1, z2)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()


@pytest.mark.parametrize(
    "estimator, extra", [("infonce", {}), ("dcl", {"tau_plus": 0.1}), ("hcl", {"tau_plus": 0.1, "beta": 1.0})]
)
def test_a_selection_that_keeps_everything_equals_nt_xent(estimator, extra):
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    model = simclr(ring_outer=1.0, ring_inner=0.0, estimator=estimator, **extra)
    expected = nt_xent(z1, z2, 0.5, estimator=estimator, **extra)
    assert model.selected_loss(z1, z2).item() == pytest.approx(expected.item(), rel=1e-6)


def test_simclr_step_uses_its_support_views_and_logs_the_selection():
    model = simclr(fnc="attract", fnc_support_views=2, fnc_top_k=3, fnc_threshold=0.0, diagnostics_every_n_steps=1)
    model.train()
    halfway(model, step=0)
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(4, 3, 6, 6, generator=g) for _ in range(4)]  # 2 main views, then 2 support views
    labels = torch.tensor([0, 1, 0, 2])
    seen = {}
    select = model.negatives.select

    def spy(sim, mask, **kw):
        seen.update(kw, sim=sim, mask=mask)
        return select(sim, mask, **kw)

    model.negatives.select = spy
    model.log = lambda name, value, **kw: seen.setdefault("logged", {}).update({name: value})
    model.training_step((images, labels), 0)
    with torch.no_grad():  # as the step forwards them (train-mode BN): main views together, support views together
        main, extra = (model.projector(model.backbone(torch.cat(part))) for part in (images[:2], images[2:]))
        z = [F.normalize(v, dim=1) for v in (*main.split(4), *extra.split(4))]
    support = torch.stack(z, dim=1)  # (4, 4, D): both main views and both support views
    torch.testing.assert_close(F.normalize(seen["support"], dim=-1), support, rtol=1e-5, atol=1e-6)
    candidates = torch.cat(z[:2])
    expected = loop_detect(support.double(), candidates.double(), seen["mask"], (torch.arange(8) % 4).tolist(), 3, 0.0)
    found = detect_false_negatives(
        seen["support"], seen["candidates"], seen["mask"], image_of_row=seen["image_of_row"], top_k=3, threshold=0.0
    )
    assert torch.equal(found, expected)
    assert seen["labels"].tolist() == [0, 1, 0, 2] * 2 and seen["candidate_labels"].tolist() == [0, 1, 0, 2] * 2
    logged = seen["logged"]
    assert logged["neg/fnc_cancelled"].item() == pytest.approx(found.sum().item() / seen["mask"].sum().item())
    same = (labels.repeat(2)[:, None] == labels.repeat(2)[None, :]) & found
    assert logged["neg/fnc_precision"].item() == pytest.approx(same.sum().item() / max(1, found.sum().item()))


# -- queue ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, expected",
    [
        ({"fnc": "attract"}, 1.649523),  # F2-moco
        ({"fnc": "eliminate"}, 1.074577),
        ({"ring_outer": 0.5, "ring_inner": 0.2}, 1.109530),  # R1
        ({"ring_outer": 0.1, "ring_inner": 0.1}, 0.697843),
    ],
)
def test_moco_queue_gives_the_spec_values(options, expected):
    model = moco(fnc_top_k=2, fnc_threshold=0.7, **options)
    k = unit(KEYS)
    support = torch.cat([k[:, None], torch.tensor(SUPK, dtype=torch.float64)], 1)  # [k_i] + momentum support
    pos, neg, mask, extra_pos = model.query_negatives(torch.tensor(Q, dtype=torch.float64), k, support)
    assert model.negatives.loss(pos, neg, mask, extra_pos).item() == pytest.approx(expected, abs=1e-6)


def test_moco_support_set_is_the_momentum_keys_and_support_views():
    model = moco(fnc="eliminate", fnc_support_views=1, symmetric=True)
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(2, 3, 5, 5, generator=g) for _ in range(2)]
    support = [torch.randn(2, 3, 5, 5, generator=g)]
    seen = {}
    select = model.negatives.select
    model.negatives.select = lambda sim, mask, **kw: seen.setdefault("calls", []).append(kw) or select(sim, mask, **kw)
    model.ssl_step(views, support)
    keys = [model.keys(v) for v in (views[1], views[0], support[0])]
    assert len(seen["calls"]) == 2  # both directions of the symmetric loss, one support set
    for call in seen["calls"]:
        torch.testing.assert_close(call["support"], torch.stack(keys, 1))
        torch.testing.assert_close(call["candidates"], unit(QUEUE).float())


def test_mochi_mixes_only_the_negatives_that_survive():
    model = moco(MoChi, ring_outer=0.5, ring_inner=0.5, n_hard=1, s=2, s_prime=0, mochi_warmup_epochs=0)
    q, k = unit(Q).float(), unit(KEYS).float()
    pos, neg, mask, extra_pos = model.query_negatives(q, k)
    real = neg[:, :10]
    ring = loop_ring(real.double(), torch.ones(2, 10, dtype=torch.bool), 0.5, 0.5)
    assert torch.equal(mask[:, :10], ring) and mask[:, 10:].all() and extra_pos is None
    # with n_hard = 1 every mix is the hardest surviving entry itself, not the hardest of the queue
    hardest_kept = real.masked_fill(~ring, -2).max(1).values
    torch.testing.assert_close(neg[:, 10:], hardest_kept[:, None].expand(2, 2), rtol=1e-5, atol=1e-6)
    assert (neg[:, 10:] < real.max(1).values[:, None]).all()


def test_curriculum_drives_every_knob():
    mochi = moco(MoChi, curriculum="linear", estimator="hcl", beta=1.0, ring_outer=0.1, s=8, s_prime=4, n_hard=4)
    assert (mochi.negatives.hardness(), mochi.negatives.beta(), mochi.negatives.ring_outer(), mochi.current_mixes()) == (
        0.0, 0.0, 1.0, (0, 0))  # fmt: skip
    halfway(mochi, 25)  # p = 0.25, h = 0.5
    assert mochi.negatives.hardness() == 0.5 and mochi.negatives.beta() == 0.5
    assert mochi.negatives.ring_outer() == pytest.approx(0.55) and mochi.current_mixes() == (4, 2)
    halfway(mochi, 80)
    assert (mochi.negatives.beta(), mochi.negatives.ring_outer(), mochi.current_mixes()) == (1.0, 0.1, (8, 4))
    root = simclr(curriculum="sqrt", curriculum_end=1.0, ring_outer=0.5)
    halfway(root, 25)
    assert root.negatives.hardness() == pytest.approx(0.5) and root.negatives.ring_outer() == pytest.approx(0.75)
    plain = simclr(estimator="hcl", beta=1.0, ring_outer=0.3)
    halfway(plain, 1)
    assert plain.negatives.beta() == 1.0 and plain.negatives.ring_outer() == 0.3  # no curriculum: configured values


@pytest.mark.parametrize(
    "options, message",
    [
        ({"curriculum": "linear"}, "none of them is on"),
        ({"curriculum": "linear", "estimator": "hcl", "beta": 1.0, "beta_anneal": True}, "beta_anneal"),
        ({"curriculum": "cosine"}, "method.curriculum must be"),
        ({"curriculum": "linear", "ring_outer": 0.5, "curriculum_end": 0.0}, "method.curriculum_end"),
    ],
)
def test_bad_curriculum_is_a_one_line_config_error(options, message):
    with pytest.raises(ConfigError, match=message):
        simclr(**options)


# -- adversarial bank -----------------------------------------------------------------------------------------
def test_adco_eliminates_from_the_loss_and_from_the_bank_ascent():
    model = tiny_adco(fnc="eliminate", fnc_top_k=3, fnc_threshold=None, ring_outer=0.9, ring_inner=0.2)
    g = torch.Generator().manual_seed(5)
    views = [torch.randn(B, 3, 8, 8, generator=g) for _ in range(2)]
    seen = {}
    select = model.negatives.select

    def spy(sim, mask, **kw):
        out = select(sim, mask, **kw)
        seen.update(kw, sim=sim, mask=mask, kept=out.mask)
        return out

    model.negatives.select = spy
    loss, _, _ = model.ssl_step(views)
    k = model.keys(views[1])  # (B, D)
    candidates = torch.cat([k, model.bank.directions().T])  # (B + K, D)
    torch.testing.assert_close(seen["candidates"], candidates)
    found = loop_detect(k[:, None].double(), candidates.double(), seen["mask"], list(range(B)), 3, None)
    kept = loop_ring(seen["sim"].double(), seen["mask"] & ~found, 0.9, 0.2)
    assert torch.equal(seen["kept"], kept)
    q = F.normalize(model.projector(model.backbone(views[0])), dim=1)
    pos = (q * k).sum(1)
    assert loss.item() == pytest.approx(info_nce(pos, seen["sim"], 0.12, neg_mask=kept).item(), rel=1e-5)
    # the bank ascends the same masked cross-entropy: dropped columns get nothing, against autograd
    w = model.bank.weight.clone().requires_grad_(True)
    logits = torch.cat([q.detach() @ k.T, q.detach() @ F.normalize(w, dim=0)], dim=1) / model.bank.temperature
    keep = kept.clone()
    keep[torch.arange(B), torch.arange(B)] = True
    ce = F.cross_entropy(logits.masked_fill(~keep, float("-inf")), torch.arange(B))
    (expected,) = torch.autograd.grad(ce, w)
    torch.testing.assert_close(model.bank._grad, expected, rtol=1e-4, atol=1e-7)
    _, grad = bank_loss_and_gradient(q.detach(), k, model.bank.weight, model.bank.temperature, 0, None, kept)
    dropped = ~kept[:, B:].any(0)  # (K,) bank columns no row kept
    assert dropped.any() and grad[:, dropped].abs().max() == 0


def test_attraction_with_the_bank_is_a_one_line_config_error(tmp_path):
    with pytest.raises(ConfigError, match="method.fnc=attract"):
        tiny_adco(fnc="attract")
    code, err = run_inprocess("train", ["method=adco", "method.fnc=attract", "logger=none", f"run_dir={tmp_path}"])
    assert code == 2  # the entry point's guard: exit status 2, one line, before any work
    assert err.strip().count("\n") == 0 and "method.fnc=eliminate" in err
    assert not (tmp_path / "checkpoints").exists()


# -- config, data pipeline, CLI, report --------------------------------------------------------------------
def test_config_defaults_are_the_official_values():
    cfg = compose("train", ["method=simclr"])
    # FNC run.py:261-267 (fn_topk 10, threshold 0.7), objective.py:81 (max); CNCE moco_ring.json:24-25 (0.1, 0.1);
    # curriculum end: CNCE anneals over 100 of 200 epochs (moco_ring.json:29,46)
    expected = {"fnc": "none", "fnc_top_k": 10, "fnc_threshold": 0.7, "fnc_support_views": 0, "fnc_aggregation": "max",
                "ring_outer": None, "ring_inner": 0.1, "curriculum": "none", "curriculum_end": 0.5}  # fmt: skip
    assert {key: cfg.method[key] for key in expected} == expected
    for name in ("simclr", "moco", "adco"):
        options = OmegaConf.to_container(compose("train", [f"method={name}"]).method)
        method_class(options.pop("name"))(StandIn(), num_classes=3, batch_size=4, optim=OptimSettings(), **options)


def test_support_views_come_last_from_the_data_pipeline():
    on = ["method.fnc=eliminate", "method.fnc_support_views=3", "data.multicrop={sizes:[16],scales:[[0.1,0.5]]}"]
    views = pretrain_views(compose("train", on)).transform(32, (0.5,) * 3, (0.5,) * 3)
    assert [v.size if hasattr(v, "size") else None for v in views.views] and len(views.views) == 2 + 1 + 3
    out = views(torch.rand(2, 3, 40, 40))
    assert [v.shape[-1] for v in out] == [32, 32, 16, 32, 32, 32]
    off = pretrain_views(compose("train", ["method.fnc=none", "method.fnc_support_views=3"])).transform(
        32, (0.5,) * 3, (0.5,) * 3
    )
    assert len(off.views) == 2


@pytest.mark.slow
def test_cli_run_with_every_part_on(tmp_path):
    args = ["method=mochi", "method.estimator=hcl", "method.beta=1.0", "method.fnc=attract", "method.fnc_support_views=1",
            "method.ring_outer=0.5", "method.curriculum=linear", "method.mochi_warmup_epochs=0", "method.queue_size=64",
            "method.n_hard=8", "method.s=4", "method.s_prime=2", "trainer.max_steps=2", "trainer.log_every_n_steps=1",
            "diagnostics.every_n_steps=1", "data.batch_size=16", f"run_dir={tmp_path}"]  # fmt: skip
    check_ok(run_cli("train.py", *QUICK, *args))
    metrics = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    for key in ("neg/fnc_cancelled", "neg/fnc_precision", "neg/ring_kept", "neg/ring_empty", "curriculum/h"):
        assert 0 <= metrics[key] <= 1, key
    assert metrics["curriculum/h"] == 1.0  # the last step: p = 1/2 = curriculum_end


@pytest.mark.parametrize("sweep", ["fnc_pool", "fnc_strategy", "ring_width", "curriculum"])
def test_the_report_shows_each_sweeps_varied_keys_as_columns(sweep):
    params = yaml.safe_load((REPO / "configs" / "sweep" / f"{sweep}.yaml").read_text())["parameters"]
    grid = {k: spec["values"] for k, spec in params.items() if "values" in spec and k != "seed"}
    fixed = [
        f"{k}={spec['value']}"
        for k, spec in params.items()
        if "value" in spec and not k.startswith(("logger", "run_dir"))
    ]
    points = [{}]
    for key, values in grid.items():
        points = [{**p, key: v} for p in points for v in values]
    composed = {}  # one composition per method (the other keys set as the sweep's overrides would set them)
    runs = []
    for i, point in enumerate(points):
        name = point.get("method", params.get("method", {}).get("value"))
        if name not in composed:
            cfg = compose("train", [*fixed, *([f"method={name}"] if "method" in point else [])])
            composed[name] = report.flatten(OmegaConf.to_container(cfg, resolve=False))
        config = {**composed[name], **{k: v for k, v in point.items() if k != "method"}}
        runs.append(report.Run(f"run{i}", config, {"knn_top1": 0.5, "seed": 0}, {"knn_top1": 0.5}))
    varied = report.build_report(runs).varied
    expected = {"method.name" if k == "method" else k for k in grid}
    assert expected <= set(varied), (expected, varied)
