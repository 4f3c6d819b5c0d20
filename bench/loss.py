"""Forward + backward of the in-batch loss against a textbook implementation, lightly and the matmul floor.

    python bench/loss.py                      # 256, 1024, 4096 views (global batch 2B), D 128
    python bench/loss.py --sizes 8192         # larger batches (a GPU-sized run takes a while on a CPU)
    python bench/loss.py --quick              # a few seconds (smoke test)

Rows, all at temperature 0.2 on (B, D) random projections of two views (2B views in all):

- ``floor``: the similarity product (2B x D)(D x 2B) and its two gradient products alone, the least any
  implementation of a full-batch contrastive loss must do;
- ``naive``: the textbook: full (2B x 2B) logits, diagonal filled with -inf, cross_entropy with labels;
- ``lightly``: lightly's NTXentLoss (``pip install lightly``, or the ``bench`` extra; "not installed" if absent);
- ``cssl/<estimator>``: :func:`cssl.contrastive.nt_xent`, which goes through the same estimator maths as
  :func:`cssl.contrastive.info_nce` (DCL with tau_plus 0.1, HCL with tau_plus 0.1 and beta 1).

Time is the median of ``--repeats`` runs after one warm-up. Memory is the bytes autograd saves for backward
(distinct storages seen by ``torch.autograd.graph.saved_tensors_hooks``: the activation memory the loss
holds between forward and backward), not the transient peak: on the CPU torch's allocations are invisible to
tracemalloc. ``xS`` divides it by the size of one (2B x 2B) fp32 matrix. Ratio columns are against the
floor and against lightly. Timings on a shared machine are noisy; by default one thread is used so the
figures are per core and less disturbed by other jobs (``--threads`` to change).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import median_seconds  # noqa: E402
from cssl.contrastive import nt_xent  # noqa: E402

TEMPERATURE = 0.2
MIB = 2**20
ESTIMATORS = {"infonce": {}, "dcl": {"tau_plus": 0.1}, "hcl": {"tau_plus": 0.1, "beta": 1.0}}


def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """The textbook NT-Xent: full logits, diagonal at -inf, cross-entropy against the partner's index."""
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2B, D)
    logits = z @ z.T / temperature  # (2B, 2B)
    logits.fill_diagonal_(float("-inf"))
    labels = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])  # (2B,)
    return F.cross_entropy(logits, labels)


def lightly_loss() -> Callable | None:
    try:
        from lightly.loss import NTXentLoss
    except ImportError:
        return None
    return NTXentLoss(temperature=TEMPERATURE)


def saved_bytes(loss_fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for the backward of ``loss_fn()``."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    loss.backward()
    return sum(storages.values())


def measure(views: int, dim: int, repeats: int, with_lightly: bool = True) -> list[dict]:
    """Rows of the table for one global batch of ``views`` views (B = views / 2 images)."""
    b = views // 2
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(b, dim, generator=g).requires_grad_()  # (B, D)
    z2 = torch.randn(b, dim, generator=g).requires_grad_()  # (B, D)
    a = F.normalize(torch.randn(2 * b, dim, generator=g), dim=1)  # (2B, D)
    grad = torch.randn(2 * b, 2 * b, generator=g)  # (2B, 2B) stands for dL/dS

    def floor() -> None:
        torch.mm(a, a.T)  # S
        torch.mm(grad, a)  # dL/dA
        torch.mm(grad.T, a)  # dL/dC

    impls: dict[str, Callable[[], torch.Tensor] | None] = {"naive": lambda: naive_nt_xent(z1, z2, TEMPERATURE)}
    lightly = lightly_loss() if with_lightly else None
    impls["lightly"] = (lambda: lightly(z1, z2)) if lightly is not None else None
    for name, options in ESTIMATORS.items():
        impls[f"cssl/{name}"] = lambda o=options, n=name: nt_xent(z1, z2, TEMPERATURE, estimator=n, **o)

    matrix = (2 * b) ** 2 * 4
    rows = [{"impl": "floor", "seconds": median_seconds(floor, repeats), "saved": None, "loss": None}]
    for name, fn in impls.items():
        if fn is None:
            rows.append({"impl": name, "seconds": None, "saved": None, "loss": None})
            continue

        def step(fn: Callable[[], torch.Tensor] = fn) -> None:
            z1.grad = z2.grad = None
            fn().backward()

        seconds = median_seconds(step, repeats)
        rows.append({"impl": name, "seconds": seconds, "saved": saved_bytes(fn), "loss": float(fn().detach())})
    for row in rows:
        row["views"], row["matrix"] = views, matrix
    return rows


def print_table(rows: list[dict]) -> None:
    floor = next(r["seconds"] for r in rows if r["impl"] == "floor")
    light = next((r["seconds"] for r in rows if r["impl"] == "lightly"), None)
    print(
        f"{'views':>6} {'impl':<13} {'ms':>9} {'x floor':>8} {'x lightly':>10} {'saved MiB':>10} {'xS':>5} {'loss':>9}"
    )
    for r in rows:
        if r["seconds"] is None:
            print(f"{r['views']:>6} {r['impl']:<13} {'not installed':>28}")
            continue
        ms = 1000 * r["seconds"]
        vs_light = f"{r['seconds'] / light:.2f}" if light else "-"
        saved = f"{r['saved'] / MIB:.1f}" if r["saved"] is not None else "-"
        ratio_s = f"{r['saved'] / r['matrix']:.1f}" if r["saved"] is not None else "-"
        loss = f"{r['loss']:.5f}" if r["loss"] is not None else "-"
        print(
            f"{r['views']:>6} {r['impl']:<13} {ms:>9.1f} {r['seconds'] / floor:>8.2f} {vs_light:>10} "
            f"{saved:>10} {ratio_s:>5} {loss:>9}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096], help="global views 2B")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: per-core figures)")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats = [64, 128], 1
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), D={args.dim}, t={TEMPERATURE}, ")
    print(f"median of {args.repeats} forward+backward runs; saved = bytes autograd keeps for backward")
    for views in args.sizes:
        print_table(measure(views, args.dim, args.repeats))


if __name__ == "__main__":
    main()
