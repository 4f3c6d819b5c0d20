"""AdCo as a method: the network loss and the bank step against explicit formulas, query-crop weights,
the once-per-optimiser-step bank update under gradient accumulation, multi-crop views, bad input, and
few-step CLI runs (with and without multi-crop) including an exact resume of the bank from a checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from cssl.core.errors import ConfigError
from cssl.data.plan import ViewPlan
from cssl.methods import METHODS
from cssl.methods.adco import AdCo
from cssl.methods.simclr import SimCLR
from cssl.models.optim import OptimSettings
from tests.conftest import REPO, cli_env, load_checkpoint, run_cli
from tests.methods.adco_helpers import MEM_LR, MEM_M, MEM_T, MEM_WD, MOCO_T, WIDTH, B, tiny_adco, tiny_net


def _images(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _ce(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, t: float) -> torch.Tensor:
    """Explicit CE of [q.k_all | q.normalize(W)] / t, label = own key (one process)."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = torch.cat([q @ k.T, q @ (w / w.norm(dim=0, keepdim=True))], dim=1) / t
    return F.cross_entropy(logits, torch.arange(q.shape[0]))


def _explicit_step(model: AdCo, views: list[torch.Tensor], pairs: list[tuple[int, int, float]]):
    """Expected (loss, bank weight after one ascent step) for (query view, key view, weight) pairs."""
    w = model.bank.weight.clone().requires_grad_(True)
    online = lambda x: model.projector(model.backbone(x))  # noqa: E731
    with torch.no_grad():
        keys = {kv: model.key_encoder(views[kv]) for _, kv, _ in pairs}
        loss = sum(wt * _ce(online(views[qv]), keys[kv], model.bank.weight, MOCO_T) for qv, kv, wt in pairs)
    mem_loss = sum(wt * _ce(online(views[qv]).detach(), keys[kv], w, MEM_T) for qv, kv, wt in pairs)
    (grad,) = torch.autograd.grad(mem_loss, w)
    velocity = MEM_M * model.bank.velocity - grad + MEM_WD * model.bank.weight
    return loss, model.bank.weight - MEM_LR * velocity


def test_registered():
    assert METHODS["adco"] is AdCo


def test_network_loss_and_bank_step_match_explicit_formulas():
    model = tiny_adco()
    views = [_images(B, 8, 1), _images(B, 8, 2)]
    expected_loss, expected_w = _explicit_step(model, views, [(0, 1, 1.0)])
    loss, feats, logs = model.ssl_step(views)
    assert loss.item() == pytest.approx(expected_loss.item(), abs=1e-5)
    assert feats.shape == (B, WIDTH) and "train/mem_loss" in logs
    key_before = [p.clone() for p in model.key_encoder.parameters()]
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.01)  # stands for the optimiser step: the EMA must follow it
    model.after_batch()
    assert torch.allclose(model.bank.weight, expected_w, atol=1e-5)
    online = list(nn.Sequential(model.backbone, model.projector).parameters())
    for k0, k1, q in zip(key_before, model.key_encoder.parameters(), online, strict=True):
        assert torch.allclose(k1, 0.9 * k0 + 0.1 * q)


def test_symmetric_and_multicrop_weights():
    model = tiny_adco(symmetric=True)
    views = [_images(B, 8, 1), _images(B, 8, 2), _images(B, 6, 3), _images(B, 6, 4), _images(B, 4, 5)]
    pairs = [(0, 1, 0.5), (1, 0, 0.5), (2, 1, 1.0), (3, 1, 1.0), (4, 1, 1.0)]
    expected_loss, expected_w = _explicit_step(model, views, pairs)
    loss, feats, _ = model.ssl_step(views)
    assert loss.item() == pytest.approx(expected_loss.item(), abs=1e-5)
    model.after_batch()
    assert torch.allclose(model.bank.weight, expected_w, atol=1e-5)


def test_any_estimator_runs_on_the_adversarial_pool():
    views = [_images(B, 8, 1), _images(B, 8, 2)]
    plain = tiny_adco().ssl_step(views)[0]
    dcl_zero = tiny_adco(estimator="dcl", tau_plus=0.0).ssl_step(views)[0]
    hcl = tiny_adco(estimator="hcl", tau_plus=0.1, beta=1.0).ssl_step(views)[0]
    assert dcl_zero.item() == pytest.approx(plain.item(), abs=1e-6)  # tau_plus 0 is InfoNCE
    assert torch.isfinite(hcl) and hcl.item() != pytest.approx(plain.item(), abs=1e-4)


def test_simclr_ignores_extra_views():
    torch.manual_seed(0)
    model = SimCLR(tiny_net(), num_classes=3, batch_size=B, optim=OptimSettings(), proj_hidden_dim=10)
    views = [_images(B, 8, 1), _images(B, 8, 2)]
    two = model.ssl_step(views)[0]
    more = model.ssl_step([*views, _images(B, 6, 3), _images(B, 4, 4)])[0]
    assert torch.equal(two, more)


class _Pairs(Dataset):
    def __init__(self, n: int) -> None:
        self.a, self.b = _images(n, 8, 10), _images(n, 8, 11)

    def __len__(self) -> int:
        return self.a.shape[0]

    def __getitem__(self, i: int):
        return [self.a[i], self.b[i]], i % 3


def test_bank_steps_once_per_optimizer_step_with_accumulated_gradient():
    model = tiny_adco(momentum=0.5)
    calls: list[tuple[float, torch.Tensor]] = []
    accumulate, step = model.bank.accumulate, model.bank.step
    history: list[dict] = [{"w": model.bank.weight.clone(), "v": model.bank.velocity.clone(), "grads": []}]

    def spy_accumulate(q, keys, pos_offset, weight=1.0):
        w = model.bank.weight.clone().requires_grad_(True)
        loss = _ce(q, keys, w, MEM_T)
        history[-1]["grads"].append(torch.autograd.grad(loss, w)[0])
        calls.append((weight, q))
        return accumulate(q, keys, pos_offset, weight)

    def spy_step():
        step()
        history.append({"w": model.bank.weight.clone(), "v": model.bank.velocity.clone(), "grads": []})

    model.bank.accumulate, model.bank.step = spy_accumulate, spy_step
    trainer = pl.Trainer(
        max_steps=2,
        accumulate_grad_batches=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, DataLoader(_Pairs(16), batch_size=B, shuffle=False))
    assert trainer.global_step == 2
    assert len(calls) == 4 and all(weight == 0.5 for weight, _ in calls)  # 4 micro-batches, 2 per step
    assert len(history) == 3  # two bank steps
    for before, after in zip(history[:-1], history[1:], strict=True):
        assert len(before["grads"]) == 2
        mean_grad = (before["grads"][0] + before["grads"][1]) / 2
        velocity = MEM_M * before["v"] - mean_grad + MEM_WD * before["w"]
        assert torch.allclose(after["w"], before["w"] - MEM_LR * velocity, atol=1e-5)


def test_bad_values_raise_config_errors():
    for kwargs, key in (({"bank_size": 0}, "bank_size"), ({"mem_t": 0.0}, "mem_t"), ({"mem_lr": -1.0}, "mem_lr")):
        with pytest.raises(ConfigError, match=f"method.{key}"):
            tiny_adco(**kwargs)


def _plan(multicrop) -> ViewPlan:
    augment = {"crop_scale": [0.2, 1.0], "hflip": False, "jitter_strength": 0.5, "blur_p": 0.0}
    return ViewPlan(augment=augment, multicrop=multicrop)


def test_build_views_adds_the_multicrop_views_after_the_two_main_ones():
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    assert len(_plan(None).transform(32, (0.5,) * 3, (0.5,) * 3)(x)) == 2
    views = _plan({"sizes": [24, 16], "scales": [[0.14, 1.0], [0.05, 0.4]]}).transform(32, (0.5,) * 3, (0.5,) * 3)
    out = views(x)
    assert [v.shape for v in out] == [(3, 3, 32, 32), (3, 3, 32, 32), (3, 3, 24, 24), (3, 3, 16, 16)]
    assert "scale=(0.05, 0.4)" in repr(views.views[3].ops[0])  # its own crop range
    assert "scale=(0.2, 1.0)" in repr(views.views[1].ops[0])


@pytest.mark.parametrize(
    ("multicrop", "match"),
    [
        ({"sizes": [24, 16], "scales": [[0.1, 1.0]]}, "equal length"),
        ({"sizes": [4], "scales": [[0.1, 1.0]]}, "sizes"),
        ({"sizes": [24], "scales": [[0.5, 0.1]]}, "scales"),
        ({"size": [24], "scales": [[0.1, 1.0]]}, "data.multicrop"),
    ],
)
def test_bad_multicrop(multicrop, match):
    with pytest.raises(ConfigError, match=match) as err:
        _plan(multicrop).transform(32, (0.5,) * 3, (0.5,) * 3)
    assert "\n" not in str(err.value)


# -- command line -----------------------------------------------------------------------------------------
QUICK = (
    "method=adco",
    "backbone=timm:test_resnet",  # 0.4M parameters: small checkpoints, quick steps
    "logger=none",
    "trainer.progress_bar=false",
    "data.batch_size=32",
    "method.proj_hidden_dim=64",
    "trainer.limit_val_batches=1",
    "data.bank_limit=64",
    "diagnostics.embedding=false",
)
MULTICROP = "data.multicrop={sizes:[24,16],scales:[[0.14,1.0],[0.05,0.4]]}"
RESUMABLE = (
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.check_val_every_n_epoch=10",
    "checkpoint.every_n_epochs=1",
    "method.bank_size=48",  # filled by the first 1.5 steps' keys, then ascended with a non-zero velocity
    "seed=3",
)


def _popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


def _state(path) -> dict:
    return load_checkpoint(path)["state_dict"]


@pytest.mark.slow
def test_cli_runs_with_and_without_multicrop_and_resumes_the_bank_exactly(tmp_path):
    crops, straight, resumed = tmp_path / "crops", tmp_path / "straight", tmp_path / "resumed"
    running = [
        _popen(*QUICK, MULTICROP, "trainer.max_steps=3", f"run_dir={crops}"),
        _popen(*QUICK, *RESUMABLE, f"run_dir={straight}"),
    ]
    for proc in running:
        _finish(proc)
    for run, steps in ((crops, 3), (straight, 4)):
        summary = json.loads((run / "summary.json").read_text())
        assert summary["method"] == "adco" and summary["global_step"] == steps
        assert 0 <= summary["knn_top1"] <= 1 and summary["train_loss"] == pytest.approx(summary["train_loss"])
    # the multi-crop run's loss adds two small-crop terms to the main one
    assert json.loads((crops / "summary.json").read_text())["train_loss"] > 2 * torch.log(torch.tensor(33.0)).item()

    mid = _state(straight / "checkpoints" / "epoch0000.ckpt")
    assert int(mid["bank.filled"]) == 48 and mid["bank.velocity"].abs().sum() > 0
    (resumed / "checkpoints").mkdir(parents=True)
    (resumed / "checkpoints" / "last.ckpt").write_bytes((straight / "checkpoints" / "epoch0000.ckpt").read_bytes())
    _finish(_popen(*QUICK, *RESUMABLE, f"run_dir={resumed}", "resume=auto"))
    # compare the epoch-end checkpoints (Lightning versions last.ckpt in a dir it did not write it in)
    a, b = _state(straight / "checkpoints" / "epoch0001.ckpt"), _state(resumed / "checkpoints" / "epoch0001.ckpt")
    assert a.keys() == b.keys()
    for key in ("bank.weight", "bank.velocity", "bank.filled"):
        assert torch.equal(a[key], b[key]), key
        assert not torch.equal(a[key], mid[key]) or key == "bank.filled"
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_cli_rejects_a_bad_bank_value_in_one_line(tmp_path):
    proc = run_cli("train.py", "method=adco", "logger=none", "method.mem_t=0", f"run_dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "method.mem_t" in proc.stderr
