"""Training images/s of every registered method through Lightning against a bare PyTorch loop (the limit).

    python bench/throughput.py              # ResNet-18 (CIFAR stem), B 32 at 32 px, every method
    python bench/throughput.py --quick      # a tiny conv net, B 8 at 16 px, 3 steps (smoke test)
    python bench/throughput.py --methods simclr moco --batch 64 --steps 10

Both sides run the same step on the same pre-made batch of two views (augmentation excluded: see
bench/augment.py): the method's ``ssl_step``, the online probe, backward, an SGD step and the
method's after-step work (EMA, enqueue, bank ascent). The bare loop calls these directly; the Lightning
side is ``Trainer.fit`` with cssl's method (logging every step into Lightning's result collection, no
logger, no progress bar, no checkpointing, no validation). Per-step time is the median over the steps after
``--warmup``; the ratio lightning/bare is the share of the limit that the framework leaves (1.0: no overhead).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cssl.methods import METHODS  # noqa: E402
from cssl.models.backbones import build_backbone  # noqa: E402
from cssl.models.optim import OptimSettings  # noqa: E402
from cssl.runtime.measure import Replay, bare_trainer  # noqa: E402

OPTIONS = {  # small pools for a CPU run; the per-step work of the loss scales with them
    "moco": {"queue_size": 4096},
    "mochi": {"queue_size": 4096, "n_hard": 256, "s": 128, "s_prime": 64, "mochi_warmup_epochs": 0},
    "adco": {"bank_size": 4096},
    "dcl": {"estimator": "dcl", "tau_plus": 0.1},
    "hcl": {"estimator": "hcl", "tau_plus": 0.1, "beta": 1.0},
}
LR = 0.05


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, *args: Any) -> None:
        self.starts.append(time.perf_counter())


class TinyNet(torch.nn.Sequential):
    """Conv + pool (--quick): the framework's fixed cost per step dominates."""

    num_features = 16

    def __init__(self) -> None:
        super().__init__(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


def build(name: str, batch: int, backbone: str = "resnet18", seed: int = 0) -> pl.LightningModule:
    torch.manual_seed(seed)
    net = TinyNet() if backbone == "tiny" else build_backbone(backbone, cifar_stem=True)
    optim = OptimSettings(name="sgd", lr=LR, scale_lr=False, warmup_epochs=0, weight_decay=0.0, momentum=0.9)
    return METHODS[name](net, num_classes=10, batch_size=batch, optim=optim, **OPTIONS.get(name, {}))


def lightning_seconds(name: str, batch: Any, b: int, steps: int, warmup: int, backbone: str) -> float:
    model = build(name, b, backbone)
    timer = StepTimer()
    trainer = bare_trainer([timer], accelerator="cpu", devices=1, max_steps=steps, log_every_n_steps=1)
    loader = DataLoader(Replay(batch, steps), batch_size=None)
    trainer.fit(model, train_dataloaders=loader)
    return statistics.median(b - a for a, b in zip(timer.starts[warmup:], timer.starts[warmup + 1 :], strict=False))


def bare_seconds(name: str, batch: Any, b: int, steps: int, warmup: int, backbone: str) -> float:
    model = build(name, b, backbone)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    views, y = batch
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss, feats, _ = model.ssl_step(views)
        probe = F.cross_entropy(model.probe(feats.detach()), y)
        (loss + probe).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.after_batch()
        times.append(time.perf_counter() - start)
    return statistics.median(times[warmup:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=sorted(METHODS), choices=sorted(METHODS))
    parser.add_argument("--backbone", default="resnet18", help="resnet18 | resnet34 | resnet50 | tiny")
    parser.add_argument("--batch", type=int, default=32, help="images per step (two views each)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.backbone, args.batch, args.size, args.steps, args.warmup = "tiny", 8, 16, 3, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for logger in ("pytorch_lightning", "lightning", "lightning.pytorch"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    pl.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(args.batch, 3, args.size, args.size, generator=g) for _ in range(2)]
    batch = (views, torch.randint(0, 10, (args.batch,), generator=g))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {args.backbone}, B={args.batch}, "
        f"{args.size} px, median step of {args.steps - args.warmup} after {args.warmup} warm-up"
    )
    print(f"{'method':<8} {'bare img/s':>11} {'lightning img/s':>16} {'lightning/bare':>15}")
    for name in args.methods:
        bare = bare_seconds(name, batch, args.batch, args.steps, args.warmup, args.backbone)
        light = lightning_seconds(name, batch, args.batch, args.steps, args.warmup, args.backbone)
        print(f"{name:<8} {args.batch / bare:>11.1f} {args.batch / light:>16.1f} {bare / light:>15.3f}")


if __name__ == "__main__":
    main()
