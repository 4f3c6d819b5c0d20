import copy
import json
import math
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cssl.contrastive import ESTIMATORS, mochi_negatives
from cssl.contrastive.estimators import info_nce_per_anchor
from cssl.contrastive.momentum import encode_keys, resolve_key_bn
from cssl.core.errors import ConfigError
from cssl.methods import METHODS
from cssl.methods.moco import MoChi, MoCo
from cssl.models.optim import OptimSettings
from tests.conftest import REPO, TinyNet, check_ok, load_checkpoint, run_cli
from tests.contrastive.reference import reference_loss

B = 6


def make(cls=MoCo, **kwargs) -> MoCo:
    torch.manual_seed(0)
    options = {"queue_size": 20, "proj_hidden_dim": 16, "proj_output_dim": 4, "key_bn": "none", **kwargs}
    return cls(TinyNet(), num_classes=3, batch_size=B, optim=OptimSettings(), **options)


def views(seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, 3, 5, 5, generator=g) for _ in range(2)]


def reference(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, t: float, **est) -> float:
    """float64 loops: positive q.k, negatives q.n for every row of ``negatives`` (K, D) or (B, M, D)."""
    q = F.normalize(q.detach().double(), dim=1).numpy()
    k = F.normalize(k.detach().double(), dim=1).numpy()
    negs = negatives.detach().double().numpy()
    rows = [(negs if negs.ndim == 2 else negs[i]) @ q[i] for i in range(len(q))]
    pos = np.array([q[i] @ k[i] for i in range(len(q))])
    return reference_loss(pos, rows, t, est.get("estimator", "infonce"), est.get("tau_plus", 0.0), est.get("beta", 0.0))


def test_registered():
    assert METHODS["moco"] is MoCo and METHODS["mochi"] is MoChi


# -- METHODS.md vectors ---------------------------------------------------------------------------------
def test_methods_vector_loss_and_per_query():
    model = make(queue_size=4, proj_output_dim=2)
    model.queue.queue.copy_(torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0.6, -0.8]]))
    q, k = torch.tensor([[1.0, 2], [2, -1]]), torch.tensor([[1.0, 1], [1, -1]])  # normalised inside
    pos, neg = model.query_logits(q, k)
    assert neg.shape == (2, 4)
    assert model.negatives.loss(pos, neg).item() == pytest.approx(0.769728, abs=1e-6)
    assert info_nce_per_anchor(pos, neg, 0.2).tolist() == pytest.approx([0.612885, 0.926572], abs=1e-6)

    second = make(queue_size=5, proj_output_dim=2)
    second.queue.queue.copy_(torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0.8, -0.6], [0.28, 0.96]]))
    assert second.negatives.loss(*second.query_logits(q, k)).item() == pytest.approx(1.098535, abs=1e-6)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_every_estimator_with_the_queue(estimator):
    est = {
        "estimator": estimator,
        "tau_plus": 0.0 if estimator == "infonce" else 0.1,
        "beta": 1.0 if estimator == "hcl" else 0.0,
    }
    model = make(temperature=0.3, **est)
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(B, 4, generator=g), torch.randn(B, 4, generator=g)
    loss = model.negatives.loss(*model.query_logits(q, k))
    assert loss.item() == pytest.approx(reference(q, k, model.queue.queue, 0.3, **est), abs=1e-5)

    mochi = make(MoChi, temperature=0.3, n_hard=5, s=4, s_prime=3, mochi_warmup_epochs=0, **est)
    torch.manual_seed(7)
    loss = mochi.negatives.loss(*mochi.query_logits(q, k))
    torch.manual_seed(7)
    synthetic = mochi_negatives(q, mochi.queue.queue, n_hard=5, s=4, s_prime=3)  # (B, 7, D)
    negatives = torch.cat([mochi.queue.queue.expand(B, -1, -1), synthetic], dim=1)  # (B, K + 7, D)
    assert loss.item() == pytest.approx(reference(q, k, negatives, 0.3, **est), abs=1e-5)


# -- the step: EMA, key forward, loss, then enqueue ------------------------------------------------------
def test_step_order_ema_then_keys_then_loss_then_enqueue():
    model = make(momentum=0.5)
    model.diagnostics_every_n_steps = 1  # diagnostics on this step
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.3)  # the online encoder moved (as after an optimiser step)
    key_before = [p.clone() for p in model.key_encoder.encoder.parameters()]
    stale_keys = F.normalize(model.key_encoder(views()[1]), dim=1)
    queue_before = model.queue.queue.clone()
    v = views()

    loss, feats, logs = model.ssl_step(v)

    online = list(model.backbone.parameters()) + list(model.projector.parameters())
    for k0, k1, q in zip(key_before, model.key_encoder.encoder.parameters(), online, strict=True):
        assert torch.allclose(k1, 0.5 * k0 + 0.5 * q)
    keys = F.normalize(model.key_encoder(v[1]), dim=1)  # the updated key encoder
    assert not torch.allclose(keys, stale_keys, atol=1e-3)
    assert torch.equal(model.queue.queue, queue_before), "enqueued before the optimiser step"
    q = model.projector(model.backbone(v[0]))
    assert loss.item() == pytest.approx(reference(q, keys, queue_before, 0.2), abs=1e-5)
    assert feats.shape == (B, 8) and "neg/queue_age_mean" in logs

    model.after_batch()
    assert torch.allclose(model.queue.queue[:B], keys) and torch.equal(model.queue.queue[B:], queue_before[B:])
    assert model.queue.ptr.item() == B
    model.after_batch()  # nothing pending: no second enqueue
    assert model.queue.ptr.item() == B


def test_ema_steps_once_per_optimiser_step_with_its_schedule():
    model = make(momentum=0.9, momentum_schedule="cosine")
    model._trainer = SimpleNamespace(estimated_stepping_batches=10, global_step=5)  # halfway
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)

    def gap() -> float:
        return sum(
            (k - q).abs().sum().item()
            for k, q in zip(model.key_encoder.encoder[0].parameters(), model.backbone.parameters(), strict=True)
        )

    start = gap()
    assert model.step_momentum_pairs() == pytest.approx(1 - 0.1 * (math.cos(math.pi / 2) + 1) / 2)  # 0.95
    assert gap() == pytest.approx(0.95 * start, rel=1e-4)
    model.step_momentum_pairs()  # a second micro-batch of the same optimiser step (gradient accumulation)
    assert gap() == pytest.approx(0.95 * start, rel=1e-4)
    model._trainer.global_step = 6
    m6 = model.step_momentum_pairs()
    assert m6 == pytest.approx(1 - 0.1 * (math.cos(0.6 * math.pi) + 1) / 2)
    assert gap() == pytest.approx(0.95 * m6 * start, rel=1e-4)
    model._trainer = None


def test_momentum_schedule_ends_at_momentum_end():
    # solo-learn's MoCo v2+: tau rises from 0.99 to 0.999 over the run (solo/utils/momentum.py:84-87)
    model = make(momentum=0.99, momentum_schedule="cosine", momentum_end=0.999)
    model._trainer = SimpleNamespace(estimated_stepping_batches=10, global_step=5)
    assert model.step_momentum_pairs() == pytest.approx(0.999 - 0.009 * (math.cos(math.pi / 2) + 1) / 2)  # 0.9945
    model._trainer.global_step = 10
    assert model.step_momentum_pairs() == pytest.approx(0.999)
    model._trainer = None


class _ReshapeSplitBN(nn.BatchNorm2d):
    """The MoCo CIFAR demo's SplitBatchNorm in training, written independently: the batch is reshaped to
    (B/S, C*S, H, W) so that image i's channels land in group i mod S, and plain BN runs over that."""

    def __init__(self, bn: nn.BatchNorm2d, splits: int) -> None:
        super().__init__(bn.num_features)
        self.load_state_dict(bn.state_dict())
        self.splits = splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        s = self.splits
        return F.batch_norm(
            x.reshape(-1, c * s, h, w), None, None, self.weight.repeat(s), self.bias.repeat(s), True, 0.0, self.eps
        ).reshape(n, c, h, w)


def test_query_bn_splits_equals_the_demos_split_batch_norm():
    model = make(query_bn_splits=3).train()
    x = torch.randn(B, 3, 5, 5, generator=torch.Generator().manual_seed(4))
    reference = copy.deepcopy(model.backbone)
    reference[1] = _ReshapeSplitBN(reference[1], 3)
    assert torch.allclose(model.query_features(x), reference(x), atol=1e-5)
    whole = model.backbone(x)
    assert not torch.allclose(model.query_features(x), whole, atol=1e-3)  # BN statistics per group differ
    model.eval()
    assert torch.equal(model.query_features(x), model.backbone(x))  # running statistics in eval mode
    model.train()
    assert torch.allclose(make(query_bn_splits=1).query_features(x), whole, atol=1e-6)
    # more groups than pairs of images: at most B // 2 groups of >= 2 images
    assert torch.allclose(make(query_bn_splits=100).query_features(x), make(query_bn_splits=3).query_features(x))


def test_symmetric_averages_both_directions_and_enqueues_both_key_sets():
    model = make(symmetric=True)
    queue_before = model.queue.queue.clone()
    v = views()
    loss, _, _ = model.ssl_step(v)
    q1, q2 = (model.projector(model.backbone(x)) for x in v)
    k1, k2 = (F.normalize(model.key_encoder(x), dim=1) for x in v)
    expected = (reference(q1, k2, queue_before, 0.2) + reference(q2, k1, queue_before, 0.2)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    model.after_batch()
    assert torch.allclose(model.queue.queue[: 2 * B], torch.cat([k2, k1]))
    assert model.queue.ptr.item() == 2 * B


def test_gradient_reaches_the_online_encoder_only():
    model = make()
    loss, _, _ = model.ssl_step(views())
    loss.backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert all(p.grad is None for p in model.key_encoder.parameters())


# -- key BN ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mode,batch,splits", [("none", 8, 4), ("sync", 8, 4), ("shuffle", 8, 4), ("split", 8, 4), ("split", 5, 8)]
)
def test_key_forward_returns_rows_in_order(mode, batch, splits):
    encoder = nn.Linear(3, 2)
    x = torch.randn(batch, 3)
    assert torch.allclose(encode_keys(encoder, x, key_bn=mode, splits=splits), encoder(x), atol=1e-6)


def test_split_bn_normalises_each_chunk_on_its_own():
    encoder = nn.BatchNorm1d(3, affine=False, eps=1e-12)
    x = torch.randn(8, 3)
    out = encode_keys(encoder, x, key_bn="split", splits=4)  # 4 chunks of 2 images
    assert torch.allclose(out.abs(), torch.ones(8, 3), atol=1e-4)  # two samples normalise to +-1
    partners = [[j for j in range(8) if j != i and torch.allclose(out[j], -out[i], atol=1e-4)] for i in range(8)]
    assert all(len(p) >= 1 for p in partners)
    plain = encode_keys(encoder, x, key_bn="none")
    assert not torch.allclose(plain.abs(), torch.ones(8, 3), atol=1e-2)


def test_auto_key_bn_is_split_on_one_process():
    assert resolve_key_bn("auto") == "split" and resolve_key_bn("sync") == "sync"


def test_sync_key_bn_converts_only_the_key_encoder():
    model = make(key_bn="sync")
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.key_encoder.modules())
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.backbone.modules())


def test_sync_key_bn_is_refused_on_cpu_processes():
    from pytorch_lightning.accelerators import CPUAccelerator

    model = make(key_bn="sync")
    model._trainer = SimpleNamespace(world_size=2, accelerator=CPUAccelerator())
    with pytest.raises(ConfigError, match="method.key_bn=sync"):
        model.setup("fit")
    model._trainer.world_size = 1
    model.setup("fit")  # one process: plain BN, allowed
    model._trainer = None


# -- MoChi -----------------------------------------------------------------------------------------------
def test_mochi_with_nothing_to_mix_equals_moco():
    moco, mochi = make(), make(MoChi, n_hard=5, s=0, s_prime=0, mochi_warmup_epochs=0)
    for (name, a), (_, b) in zip(moco.state_dict().items(), mochi.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert moco.ssl_step(views())[0].item() == mochi.ssl_step(views())[0].item()


def test_mochi_mixes_after_its_warmup_only():
    moco = make()
    waiting = make(MoChi, n_hard=5, s=4, s_prime=2, mochi_warmup_epochs=1)  # epoch 0 < 1
    mixing = make(MoChi, n_hard=5, s=4, s_prime=2, mochi_warmup_epochs=0)
    q, k = torch.randn(B, 4), torch.randn(B, 4)
    assert waiting.query_logits(q, k)[1].shape == (B, 20) and mixing.query_logits(q, k)[1].shape == (B, 26)
    assert moco.ssl_step(views())[0].item() == waiting.ssl_step(views())[0].item()
    loss = mixing.ssl_step(views())[0]
    assert loss.item() != moco.ssl_step(views())[0].item()
    mixing.after_batch()
    assert mixing.queue.ptr.item() == B  # only the B keys, never the synthetic negatives


# -- configuration and checkpoints -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls,kwargs,key",
    [
        (MoCo, {"queue_size": 0}, "method.queue_size"),
        (MoCo, {"queue_size": 1.5}, "method.queue_size"),
        (MoCo, {"momentum": 1.5}, "method.momentum"),
        (MoCo, {"momentum": -0.1}, "method.momentum"),
        (MoCo, {"key_bn": "batch"}, "method.key_bn"),
        (MoCo, {"momentum_schedule": "linear"}, "method.momentum_schedule"),
        (MoCo, {"query_bn_splits": 0}, "method.query_bn_splits"),
        (MoCo, {"momentum_schedule": "cosine", "momentum_end": 0.5}, "method.momentum_end"),
        (MoCo, {"estimator": "nce"}, "estimator"),
        (MoChi, {"n_hard": 21}, "method.n_hard"),
        (MoChi, {"n_hard": 0}, "method.n_hard"),
        (MoChi, {"s": -1}, "method.s "),
        (MoChi, {"s_prime": -1}, "method.s_prime"),
        (MoChi, {"mochi_warmup_epochs": -1}, "method.mochi_warmup_epochs"),
    ],
)
def test_bad_configuration(cls, kwargs, key):
    with pytest.raises(ConfigError, match=key) as err:
        make(cls, **kwargs)
    assert "\n" not in str(err.value)


def test_queue_is_part_of_the_state_dict():
    model = make()
    model.ssl_step(views())
    model.after_batch()
    state = model.state_dict()
    assert torch.equal(state["queue.queue"], model.queue.queue) and state["queue.ptr"].item() == B
    fresh = make(queue_size=20)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.queue.queue, model.queue.queue) and fresh.queue.ptr.item() == B


# -- end to end ------------------------------------------------------------------------------------------
QUICK = (
    "logger=none",
    "trainer.progress_bar=false",
    "data.batch_size=32",
    "trainer.limit_val_batches=1",
    "method.queue_size=100",
    "backbone=timm:test_resnet",
    "data.bank_limit=64",
    "diagnostics.embedding=false",
)


def train(*args: str) -> subprocess.CompletedProcess:
    return check_ok(run_cli("train.py", *QUICK, *args, timeout=600))


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _ckpt(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.ckpt")


@pytest.mark.slow
def test_cli_moco_then_resume_restores_the_queue(tmp_path):
    train("method=moco", "trainer.max_steps=3", f"run_dir={tmp_path}")
    summary = _summary(tmp_path)
    assert summary["method"] == "moco" and summary["global_step"] == 3 and np.isfinite(summary["train_loss"])
    saved = _ckpt(tmp_path)["state_dict"]
    assert saved["queue.ptr"].item() == 96 and saved["queue.queue"].shape == (100, 128)

    # resume in the same run dir for one more step; it also runs the DCL estimator on the queue from the CLI
    train(
        "method=moco",
        "method.estimator=dcl",
        "method.tau_plus=0.1",
        "trainer.max_steps=4",
        f"run_dir={tmp_path}",
        "resume=auto",
    )
    summary = _summary(tmp_path)
    assert summary["global_step"] == 4 and summary["estimator"] == "dcl" and np.isfinite(summary["train_loss"])
    after = _ckpt(tmp_path)["state_dict"]
    # step 4 wrote 32 keys at slots 96..99 and 0..27; slots 28..95 must be the restored ones, a step older
    assert after["queue.ptr"].item() == (96 + 32) % 100
    assert torch.equal(after["queue.queue"][28:96], saved["queue.queue"][28:96])
    assert torch.equal(after["queue.age"][28:96], saved["queue.age"][28:96] + 1)
    assert not torch.equal(after["queue.queue"][:28], saved["queue.queue"][:28])
    assert (after["queue.age"][:28] == 0).all() and (after["queue.age"][96:] == 0).all()


@pytest.mark.slow
def test_cli_mochi(tmp_path):
    args = ("method=mochi", "method.mochi_warmup_epochs=0", "method.n_hard=16", "method.s=8", "method.s_prime=4")
    train(*args, "trainer.max_steps=3", f"run_dir={tmp_path}")
    summary = _summary(tmp_path)
    assert summary["method"] == "mochi" and summary["global_step"] == 3 and np.isfinite(summary["train_loss"])
    assert _ckpt(tmp_path)["state_dict"]["queue.ptr"].item() == 96  # the B keys of each step, no synthetic ones


@pytest.mark.parametrize(
    "experiment,expected",
    [
        (
            "cifar10_moco_demo",
            {
                "method.queue_size": 4096,
                "method.momentum": 0.99,
                "method.temperature": 0.1,
                "data.batch_size": 512,
                "optimizer.lr": 0.06,
                "optimizer.weight_decay": 5e-4,
                "backbone": "resnet18",
            },
        ),
        (
            "imagenet_moco",
            {
                "method.queue_size": 65536,
                "method.momentum": 0.999,
                "method.temperature": 0.2,
                "optimizer.lr": 0.03,
                "optimizer.weight_decay": 1e-4,
                "trainer.max_epochs": 200,
                "backbone": "resnet50",
            },
        ),
        ("imagenet100_moco", {"method.name": "moco", "data.name": "imagefolder", "backbone": "resnet50"}),
        (
            "imagenet100_mochi",
            {
                "method.name": "mochi",
                "method.n_hard": 1024,
                "method.s": 512,
                "method.s_prime": 256,
                "method.temperature": 0.2,
            },
        ),
    ],
)
def test_experiment_configs_hold_the_published_recipes(experiment, expected):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", [f"experiment={experiment}"])
    assert cfg.optimizer.name == "sgd" and cfg.trainer.max_epochs >= 200
    for key, value in expected.items():
        assert OmegaConf.select(cfg, key) == value, key
