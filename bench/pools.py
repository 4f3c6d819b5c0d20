"""Per-step cost of the pools against a ResNet-18 training step at 32 px.

    python bench/pools.py               # B 256, K 16384, MoChi (N, s, s') = (1024, 512, 256), bank K 16384
    python bench/pools.py --quick       # small sizes (smoke test)

Rows: the queue enqueue (QueuePool.enqueue of B keys), the MoChi mixing (hardest-N search + s + s' mixes
per query, and the extra (B, s + s') logits it adds to the loss), the AdCo bank (its similarities, the
closed-form gradient of the bank's loss and the ascent step), each as a share of one ResNet-18 (CIFAR stem)
forward + backward of the B query images at 32 px. Medians over ``--repeats``; one thread by default so the
figures are per core on a shared machine (``--threads`` to change).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import median_seconds  # noqa: E402
from cssl.contrastive import AdversarialBank, QueuePool, mochi_negatives  # noqa: E402
from cssl.models.backbones import build_backbone  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--queue", type=int, default=16384, help="K of the queue and of the AdCo bank")
    parser.add_argument("--mochi", type=int, nargs=3, default=[1024, 512, 256], metavar=("N", "S", "S_PRIME"))
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.queue, args.mochi, args.repeats = 16, 1024, [64, 32, 16], 2
    torch.set_num_threads(args.threads)
    b, k, d = args.batch, args.queue, args.dim
    n_hard, s, s_prime = args.mochi
    g = torch.Generator().manual_seed(0)

    net = build_backbone("resnet18", cifar_stem=True)
    images = torch.randn(b, 3, 32, 32, generator=g)

    def resnet_step() -> None:
        net.zero_grad(set_to_none=True)
        net(images).sum().backward()

    queue = QueuePool(k, d, generator=g)
    keys = F.normalize(torch.randn(b, d, generator=g), dim=1)  # (B, D)
    q = F.normalize(torch.randn(b, d, generator=g), dim=1).requires_grad_()  # (B, D)

    def mochi() -> None:
        extra = mochi_negatives(q, queue.negatives(), n_hard=n_hard, s=s, s_prime=s_prime)  # (B, s + s', D)
        logits = torch.einsum("bd,bsd->bs", q, extra)  # (B, s + s')
        logits.sum().backward()

    bank = AdversarialBank(d, k, init="random")

    def adco() -> None:
        pos, sim, mask = bank.similarities(q, keys, 0)  # (B,), (B, B + K), (B, B + K)
        sim.sum().backward()
        bank.accumulate(q.detach(), keys, 0)
        bank.step()

    base = median_seconds(resnet_step, args.repeats)
    rows = [
        ("queue enqueue", median_seconds(lambda: queue.enqueue(keys), args.repeats)),
        ("MoChi mixing", median_seconds(mochi, args.repeats)),
        ("AdCo bank", median_seconds(adco, args.repeats)),
    ]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); B={b}, K={k}, D={d}, MoChi (N, s, s')={tuple(args.mochi)}"
    )
    print(f"{'part':<22} {'ms':>9} {'% of step':>10}")
    print(f"{'ResNet-18 fwd+bwd 32px':<22} {1000 * base:>9.1f} {100.0:>10.1f}")
    for name, seconds in rows:
        print(f"{name:<22} {1000 * seconds:>9.2f} {100 * seconds / base:>10.2f}")
    both = rows[0][1] + rows[1][1]
    print(f"{'queue + MoChi':<22} {1000 * both:>9.2f} {100 * both / base:>10.2f}")


if __name__ == "__main__":
    main()
