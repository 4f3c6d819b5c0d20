import itertools

import pytest
import torch
import torch.nn as nn

from cssl.contrastive import QueuePool
from cssl.contrastive.momentum import encode_keys, resolve_key_bn
from cssl.methods.moco import MoCo
from cssl.models.optim import OptimSettings
from tests.conftest import TinyNet
from tests.distributed.harness import run_ranks

K, D, B = 10, 3, 3  # B per rank: the global batch of 6 does not divide K, so the ring wraps mid-batch


def _global_batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2 * B, D, generator=g) for _ in range(4)]


def _tiny_moco() -> MoCo:
    torch.manual_seed(0)  # every rank builds the same model (DDP would broadcast it anyway)
    return MoCo(
        TinyNet(4, padding=0),
        num_classes=3,
        batch_size=4,
        optim=OptimSettings(),
        queue_size=16,
        proj_hidden_dim=8,
        proj_output_dim=4,
    )


def _on_rank(rank: int, world_size: int) -> dict:
    out: dict = {}
    torch.manual_seed(0)
    pool = QueuePool(K, D)
    for batch in _global_batches():
        pool.enqueue(batch[rank * B : (rank + 1) * B])  # each rank holds its slice of the global batch
    out.update(queue=pool.queue, ptr=pool.ptr, age=pool.age)

    # shuffle BN: local generators differ, the permutation is rank 0's
    torch.manual_seed(100 + rank)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(2))[rank * 4 : (rank + 1) * 4]  # (4, 3)
    linear = nn.Linear(3, 2)
    torch.nn.init.constant_(linear.weight, 0.5), torch.nn.init.constant_(linear.bias, -0.1)  # same on every rank
    out["linear"], out["linear_plain"] = encode_keys(linear, x, key_bn="shuffle"), linear(x).detach()
    out["bn"] = encode_keys(nn.BatchNorm1d(3, affine=False), x, key_bn="auto")
    out["mode"] = resolve_key_bn("auto")

    # a MoCo step on both ranks: the queue receives the keys of every rank, in rank order
    model = _tiny_moco()
    views = [
        torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(s))[rank * 4 : (rank + 1) * 4] for s in (3, 4)
    ]
    model.ssl_step(views)
    out["keys"] = model._pending_keys.clone()
    model.after_batch()
    out.update(moco_queue=model.queue.queue, moco_ptr=model.queue.ptr)
    return out


@pytest.mark.slow
def test_queue_and_shuffle_bn_on_two_ranks():
    r0, r1 = run_ranks(_on_rank, world_size=2)

    # the queue is the same on both ranks and equals one process fed the global batches
    torch.manual_seed(0)
    single = QueuePool(K, D)
    for batch in _global_batches():
        single.enqueue(batch)
    for r in (r0, r1):
        assert torch.equal(r["queue"], single.queue) and r["ptr"].item() == single.ptr.item() == (4 * 2 * B) % K
        assert torch.equal(r["age"], single.age)

    # shuffle BN gives each rank back its own rows
    for r in (r0, r1):
        assert r["mode"] == "shuffle"
        assert torch.allclose(r["linear"], r["linear_plain"], atol=1e-6)
    # ... normalised with the statistics of a shuffled half of the global batch, not of its own rows
    bn = torch.cat([r0["bn"], r1["bn"]])  # (8, 3), rows in global order
    halves = [
        set(c)
        for c in itertools.combinations(range(8), 4)
        if bn[list(c)].mean(0).abs().max() < 1e-5 and bn[[i for i in range(8) if i not in c]].mean(0).abs().max() < 1e-5
    ]
    assert halves, "no split of the global batch into two normalised groups of B"
    assert {0, 1, 2, 3} not in halves and {4, 5, 6, 7} not in halves, "each rank normalised its own rows"

    # MoCo: keys of rank 0 then rank 1 at the pointer, identical queues
    assert torch.equal(r0["moco_queue"], r1["moco_queue"]) and r0["moco_ptr"].item() == r1["moco_ptr"].item() == 8
    assert torch.allclose(r0["moco_queue"][:4], r0["keys"]) and torch.allclose(r0["moco_queue"][4:8], r1["keys"])
