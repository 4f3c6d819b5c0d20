"""BYOL, the negative-free control: NEGATIVES.md section 3 vectors (float64), the target's EMA and schedule,
no gradient to the target, the step's wiring against an independent float64 formulation, the collapse
monitor, refused contrastive options, the CLI (train, exact resume, report) and the solo-learn recipe."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from cssl.contrastive.bootstrap import byol_loss, regression_cosine
from cssl.contrastive.momentum import MomentumEncoder
from cssl.core.errors import ConfigError
from cssl.methods import METHODS, ContrastiveMethod
from cssl.methods.byol import BYOL, projection_std
from cssl.models.optim import OptimSettings
from cssl.report import build_report, load_local
from tests.conftest import (
    QUICK,
    TinyNet,
    assert_same_training_state,
    compose,
    interrupted_copy,
    load_checkpoint,
    train_inprocess,
)

B = 6
# NEGATIVES.md 3.4
P1 = [[0.50, -0.20, 0.30, 0.10], [0.00, 0.40, 0.40, -0.30], [-0.60, 0.10, 0.20, 0.50]]
P2 = [[0.30, 0.10, 0.50, -0.20], [0.20, 0.50, -0.10, 0.40], [-0.40, -0.30, 0.10, 0.60]]
Z1 = [[0.40, -0.10, 0.20, 0.30], [0.10, 0.30, 0.50, -0.20], [-0.50, 0.20, 0.00, 0.40]]
Z2 = [[0.20, 0.00, 0.60, -0.10], [0.30, 0.40, 0.00, 0.30], [-0.30, -0.40, 0.20, 0.50]]


def f64(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def unit_distance(p: np.ndarray, z: np.ndarray) -> np.ndarray:
    """||p/|p| - z/|z|||^2 per row (the paper's form of the loss, without the cosine identity)."""
    a = p / np.linalg.norm(p, axis=1, keepdims=True)
    b = z / np.linalg.norm(z, axis=1, keepdims=True)
    return ((a - b) ** 2).sum(1)


def make(**kwargs) -> BYOL:
    torch.manual_seed(0)
    options = {"proj_hidden_dim": 16, "proj_output_dim": 4, "pred_hidden_dim": 12, **kwargs}
    return BYOL(TinyNet(), num_classes=3, batch_size=B, optim=OptimSettings(), **options)


def views(seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, 3, 5, 5, generator=g) for _ in range(2)]


def test_registered_without_negatives():
    assert METHODS["byol"] is BYOL and not issubclass(BYOL, ContrastiveMethod)
    assert all(issubclass(cls, ContrastiveMethod) for name, cls in METHODS.items() if name != "byol")


# -- NEGATIVES.md 3.4 ---------------------------------------------------------------------------------------
def test_b1_loss_and_cosines():
    p1, p2, z1, z2 = f64(P1), f64(P2), f64(Z1), f64(Z2)
    assert regression_cosine(p1, z2).tolist() == pytest.approx([0.675211, 0.187485, 0.720277], abs=1e-6)
    assert regression_cosine(p2, z1).tolist() == pytest.approx([0.438529, 0.094438, 0.719418], abs=1e-6)
    loss = byol_loss(p1, p2, z1, z2)
    assert loss.dtype == torch.float64 and loss.item() == pytest.approx(2.109761, abs=1e-6)
    reference = (unit_distance(np.array(P1), np.array(Z2)) + unit_distance(np.array(P2), np.array(Z1))).mean()
    assert loss.item() == pytest.approx(reference, abs=1e-12)


def test_b2_edges():
    z1, z2 = f64(Z1), f64(Z2)
    scale = f64([[0.5], [2.0], [7.0]])
    assert byol_loss(scale * z2, 3 * z1, z1, z2).item() == pytest.approx(0.0, abs=1e-12)
    assert byol_loss(-z2, -z1, z1, z2).item() == pytest.approx(8.0, abs=1e-12)


def test_b3_tau_schedule_and_one_ema_step():
    def tau(base: float, k: int, total: int) -> float:  # NEGATIVES.md 3.2, written out
        return 1 - (1 - base) * (math.cos(math.pi * k / total) + 1) / 2

    model = make(momentum=0.996)
    model._trainer = SimpleNamespace(estimated_stepping_batches=1000, global_step=0)
    want = [0.996, 0.996585786, 0.998, 0.999414214, 1.0]
    for k, value in zip((0, 250, 500, 750, 1000), want, strict=True):
        assert model.current_momentum(k) == pytest.approx(value, abs=1e-9) == pytest.approx(tau(0.996, k, 1000))
    model = make(momentum=0.99)
    model._trainer = SimpleNamespace(estimated_stepping_batches=1000, global_step=0)
    assert [model.current_momentum(k) for k in (0, 250, 500)] == pytest.approx([0.99, 0.991464466, 0.995], abs=1e-9)

    class Vector(nn.Module):
        def __init__(self, values: list[float]) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor(values, dtype=torch.float64))

    target = MomentumEncoder(Vector([1.0, -2.0, 0.5]), momentum=0.996, schedule="cosine")
    target.update(Vector([0.0, 1.0, 1.5]), target.momentum_at(250, 1000))
    assert target.encoder.w.tolist() == pytest.approx([0.996585786, -1.989757359, 0.503414214], abs=1e-9)


# -- the method ---------------------------------------------------------------------------------------------
def test_step_matches_a_float64_formulation_and_only_the_online_network_gets_gradient():
    model = make(key_bn="none")
    v = views()
    loss, feats, logs = model.ssl_step(v)
    assert feats.shape == (B, 8) and loss.dtype == torch.float32
    # at the start the target is a copy of the online network (BN in train mode: the same batch statistics)
    with torch.no_grad():
        z = [model.projector(model.backbone(x)).double() for x in v]
        p = [model.predictor(model.projector(model.backbone(x))).double() for x in v]
    reference = (unit_distance(p[0].numpy(), z[1].numpy()) + unit_distance(p[1].numpy(), z[0].numpy())).mean()
    assert loss.item() == pytest.approx(reference, abs=1e-5)
    assert logs["byol/loss"].item() == pytest.approx(loss.item())
    assert logs["byol/cos"].item() == pytest.approx(1 - reference / 4, abs=1e-5)
    assert logs["byol/tau"].item() == pytest.approx(0.99)  # no trainer: tau_base
    loss.backward()
    assert all(q.grad is None for q in model.key_encoder.parameters())
    for module in (model.backbone, model.projector, model.predictor):
        assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in module.parameters())


def test_target_is_the_ema_of_backbone_and_projector_once_per_optimiser_step():
    model = make(momentum=0.9)
    model._trainer = SimpleNamespace(estimated_stepping_batches=10, global_step=0)
    online = list(model.backbone.parameters()) + list(model.projector.parameters())
    with torch.no_grad():
        for q in online:
            q.add_(torch.randn_like(q))
    before = [k.detach().clone() for k in model.key_encoder.parameters()]
    assert len(before) == len(online)  # parameters only: no predictor in the target
    buffers = [b.clone() for b in model.key_encoder.buffers()]

    model.after_batch(stepped=False)  # a micro-batch before the first optimiser step: nothing moves
    assert all(torch.equal(a, k) for a, k in zip(before, model.key_encoder.parameters(), strict=True))
    model._trainer.global_step = 4  # optimiser step 3 has just been taken
    model.after_batch()
    tau = 1 - 0.1 * (math.cos(math.pi * 3 / 10) + 1) / 2
    for a, k, q in zip(before, model.key_encoder.parameters(), online, strict=True):
        assert torch.allclose(k, tau * a + (1 - tau) * q.detach(), atol=1e-6)
    after = [k.detach().clone() for k in model.key_encoder.parameters()]
    model.after_batch(stepped=False)  # a later micro-batch of the same step (gradient accumulation)
    assert all(torch.equal(a, k) for a, k in zip(after, model.key_encoder.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.key_encoder.buffers(), strict=True))  # no EMA
    model._trainer = None


def test_training_through_lightning_equals_the_papers_loop_written_out():
    """Three steps of cssl's BYOL under a Lightning Trainer (its optimiser groups, schedule and hooks) leave
    every weight where a plain loop of the paper's steps leaves it: per-view forwards, the symmetric loss, SGD
    with momentum and weight decay on the online backbone, projector and predictor (not on biases or norms),
    then the EMA of the target with tau_k of the cosine schedule, after each optimiser step."""
    import copy

    import pytorch_lightning as pl

    steps, lr, wd, base_tau = 3, 0.5, 1e-3, 0.9
    torch.manual_seed(0)
    optim = OptimSettings(
        name="sgd", lr=lr, weight_decay=wd, momentum=0.9, warmup_epochs=0, scale_lr=False, min_lr_ratio=1.0
    )
    options = {"proj_hidden_dim": 16, "proj_output_dim": 4, "pred_hidden_dim": 12, "momentum": base_tau}
    model = BYOL(TinyNet(), num_classes=3, batch_size=B, optim=optim, key_bn="none", **options)
    online = nn.ModuleDict({"backbone": model.backbone, "projector": model.projector, "predictor": model.predictor})
    ref, target = copy.deepcopy(online), copy.deepcopy(model.key_encoder.encoder)
    initial = {n: t.clone() for n, t in ref.state_dict().items() if t.is_floating_point()}
    batches = [(views(seed), torch.zeros(B, dtype=torch.long)) for seed in range(1, steps + 1)]

    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))

    params = list(ref.parameters())
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    sgd = torch.optim.SGD([{"params": decay, "weight_decay": wd}, {"params": no_decay}], lr=lr, momentum=0.9)
    for k, (v, _) in enumerate(batches):
        p = [ref["predictor"](ref["projector"](ref["backbone"](x))) for x in v]
        with torch.no_grad():
            z = [target(x) for x in v]
        loss = sum((2 - 2 * nn.functional.cosine_similarity(p[i], z[1 - i], dim=1)).mean() for i in (0, 1))
        sgd.zero_grad()
        loss.backward()
        sgd.step()
        tau = 1 - (1 - base_tau) * (math.cos(math.pi * k / steps) + 1) / 2
        with torch.no_grad():
            online_params = [*ref["backbone"].parameters(), *ref["projector"].parameters()]
            for t, q in zip(target.parameters(), online_params, strict=True):
                t.mul_(tau).add_(q, alpha=1 - tau)

    got = {**online.state_dict(), **{"target." + n: t for n, t in model.key_encoder.encoder.state_dict().items()}}
    want = {**ref.state_dict(), **{"target." + n: t for n, t in target.state_dict().items()}}
    assert got.keys() == want.keys()
    for name in want:
        assert torch.allclose(got[name].float(), want[name].float(), atol=1e-5), name
    # the weights moved, so the comparison is not one of untouched initial values (a bias feeding a BN layer
    # gets no gradient and may stay)
    still = [n for n, t in initial.items() if torch.allclose(want[n], t) and not n.endswith("bias")]
    assert not still, f"did not move: {still}"


def test_projection_std_sees_collapse():
    torch.manual_seed(0)
    z = torch.randn(2, 4096, 256)
    # independent: std over the batch of each unit vector's coordinates, mean over views and dimensions
    unit = z.double() / z.double().norm(dim=-1, keepdim=True)
    mean = unit.mean(1, keepdim=True)
    want = (((unit - mean) ** 2).sum(1) / (z.shape[1] - 1)).sqrt().mean()
    assert projection_std(z).item() == pytest.approx(want.item(), rel=1e-5)
    assert projection_std(z).item() == pytest.approx(1 / math.sqrt(256), rel=0.02)  # healthy
    collapsed = torch.randn(1, 1, 256).expand(2, 64, 256) * torch.rand(2, 64, 1)  # one direction, any length
    assert projection_std(collapsed).item() == pytest.approx(0.0, abs=1e-6)


def test_loss_is_fp32_under_autocast():
    p, z = torch.randn(4, 8).bfloat16(), torch.randn(4, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert byol_loss(p, p, z, z).dtype == torch.float32


@pytest.mark.parametrize(
    "option",
    [
        {"temperature": 0.2},
        {"estimator": "hcl"},
        {"tau_plus": 0.1},
        {"beta_anneal": True},
        {"fnc": "attract"},
        {"ring_outer": 0.1},
        {"curriculum": "linear"},
    ],
)
def test_contrastive_options_are_refused(option):
    with pytest.raises(ConfigError, match=f"method.{next(iter(option))}: not applicable to byol"):
        make(**option)


def test_contrastive_keys_are_not_in_the_config():
    with pytest.raises(ConfigCompositionException):
        compose("train", ["method=byol", "method.temperature=0.2"])
    with pytest.raises(ConfigError, match="pred_hidden_dim"):
        make(pred_hidden_dim=0)


# -- command line: train, exact resume, report --------------------------------------------------------------
@pytest.mark.slow
def test_cli_trains_resumes_exactly_and_reports(tmp_path):
    common = (
        *QUICK,
        "method=byol",
        "method.pred_hidden_dim=64",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "trainer.check_val_every_n_epoch=1",
        "trainer.log_every_n_steps=1",
        "diagnostics.every_n_steps=1",
        "checkpoint.every_n_epochs=1",
        "seed=3",
    )
    straight = tmp_path / "straight"
    train_inprocess(*common, f"run_dir={straight}")
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["method"] == "byol" and summary["estimator"] is None and summary["global_step"] == 6
    assert summary["tags"] == ["method=byol", "data=digits"]  # no estimator tag
    metrics = summary["metrics"]
    assert 0 <= metrics["byol/loss"] <= 8 and metrics["byol/loss"] == pytest.approx(summary["train_loss"])
    assert metrics["byol/cos"] == pytest.approx(1 - metrics["byol/loss"] / 4, abs=1e-6)
    assert metrics["byol/tau"] == pytest.approx(1 - 0.01 * (math.cos(math.pi * 5 / 6) + 1) / 2, abs=1e-6)
    assert 0 < metrics["byol/z_std"] < 1
    assert not any(key.startswith("neg/") for key in metrics)
    for key in ("knn_top1", "online_top1"):
        assert 0 <= summary[key] <= 1

    # an interrupted run: only the checkpoint written after epoch 1 survives (resume=auto picks the newest)
    resumed = tmp_path / "resumed"
    interrupted_copy(straight, resumed)
    train_inprocess(*common, f"run_dir={resumed}", "resume=auto")
    a, b = (load_checkpoint(run / "checkpoints" / "last.ckpt") for run in (straight, resumed))
    assert a["global_step"] == 6
    assert_same_training_state(a, b)
    # the target moved between the checkpoints and stays behind the online network
    mid = load_checkpoint(straight / "checkpoints" / "epoch0000.ckpt")["state_dict"]
    target = next(k for k in a["state_dict"] if k.startswith("key_encoder.encoder.0.") and k.endswith("weight"))
    online = target.replace("key_encoder.encoder.0.", "backbone.")
    assert not torch.equal(mid[target], a["state_dict"][target])
    assert not torch.equal(a["state_dict"][online], a["state_dict"][target])

    # the report reads BYOL next to a contrastive run (keys it does not have are shown as missing)
    simclr = tmp_path / "simclr"
    simclr.mkdir()
    config = yaml.safe_load((straight / "config.yaml").read_text())
    config["method"] = OmegaConf.to_container(compose("train", ["method=simclr"]).method)
    (simclr / "config.yaml").write_text(yaml.safe_dump(config))
    (simclr / "summary.json").write_text(json.dumps({**summary, "method": "simclr", "estimator": "infonce"}))
    report = build_report(load_local([straight, simclr]))
    assert report.varied[0] == "method.name" and {r.values["method.name"] for r in report.rows} == {"byol", "simclr"}
    assert "byol/z_std" in report.columns


# -- the solo-learn recipe ----------------------------------------------------------------------------------
SOLO = {  # value read from github:vturrisi/solo-learn @ 9187ea39 (file:line in the experiment file)
    "method.name": "byol",
    "backbone": "resnet18",
    "cifar_stem": True,
    "zero_init_residual": False,
    "method.proj_hidden_dim": 4096,
    "method.proj_output_dim": 256,
    "method.pred_hidden_dim": 4096,
    "method.proj_layers": 2,
    "method.proj_batch_norm": True,
    "method.momentum": 0.99,
    "method.momentum_schedule": "cosine",
    "method.key_bn": "none",
    "method.probe_lr": 0.1,
    "data.name": "cifar10",
    "data.batch_size": 256,
    "data.augment.crop_scale": [0.08, 1.0],
    "data.augment.jitter_p": 0.8,
    "data.augment.jitter_factors": [0.4, 0.4, 0.2, 0.1],
    "data.augment.grayscale_p": 0.2,
    "data.augment.blur_p": 0.0,
    "data.augment.hflip": True,
    "data.augment_per_view": [{"blur_p": 0.0, "solarize_p": 0.0}, {"blur_p": 0.0, "solarize_p": 0.2}],
    "data.multicrop": None,
    "optimizer.name": "lars",
    "optimizer.lr": 1.0,
    "optimizer.scale_lr": True,
    "optimizer.weight_decay": 1e-5,
    "optimizer.momentum": 0.9,
    "optimizer.lars_eta": 0.02,
    "optimizer.lars_clip": True,
    "optimizer.exclude_bias_norm": True,
    "optimizer.warmup_epochs": 10,
    "optimizer.min_lr_ratio": 0.0,
    "trainer.max_epochs": 1000,
    "trainer.precision": "16-mixed",
    "trainer.sync_batchnorm": True,
}


def test_sololearn_recipe_values():
    cfg = compose("train", ["experiment=cifar10_byol_sololearn"])
    for key, value in SOLO.items():
        got = OmegaConf.select(cfg, key)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        assert got == value, key
    # every official value carries the file:line it was read from
    text = (Path(__file__).resolve().parents[2] / "configs/experiment/cifar10_byol_sololearn.yaml").read_text()
    for leaf in ("proj_hidden_dim", "pred_hidden_dim", "momentum:", "lars_eta", "lars_clip", "solarize_p"):
        line = next(row for row in text.splitlines() if leaf in row and not row.lstrip().startswith("#"))
        assert ".yaml:" in line or ".py:" in line, line
