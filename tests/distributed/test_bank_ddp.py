"""The adversarial bank under two real gloo ranks: identical on both ranks after every step, and equal to
the bank of one process fed the same global batch; AdCo's positives sit at global_rank * B.

One spawn computes everything (the pure bank, then AdCo with a DDP-style gradient average); the single-process
references are computed here, in the parent.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cssl.contrastive import AdversarialBank
from cssl.core import distributed
from tests.distributed.harness import run_ranks
from tests.methods.adco_helpers import tiny_adco

WORLD, B, D, K, STEPS = 2, 3, 4, 8, 3  # K > B_g = 6: the key fill spans two steps


def _bank_problem() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    return [
        (
            F.normalize(torch.randn(WORLD * B, D, generator=g), dim=1),
            F.normalize(torch.randn(WORLD * B, D, generator=g), dim=1),
        )
        for _ in range(STEPS)
    ]


def _run_bank(rank: int, batches: list[tuple[torch.Tensor, torch.Tensor]], rows: slice) -> list[dict]:
    bank = AdversarialBank(D, K, temperature=0.2, lr=0.5, momentum=0.9, weight_decay=1e-4, init="keys")
    states = []
    for q_all, k_all in batches:
        q, k = q_all[rows], k_all[rows]  # this rank's (B, D) rows
        keys = distributed.gather(k)  # (B_g, D)
        bank.accumulate(q, keys, pos_offset=rank * q.shape[0])
        bank.offer_keys(keys)
        bank.step()
        states.append({"weight": bank.weight.clone(), "velocity": bank.velocity.clone(), "filled": int(bank.filled)})
    return states


def _method_images() -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(6)
    return [[torch.randn(WORLD * B, 3, 8, 8, generator=g) for _ in range(2)] for _ in range(2)]


def _run_method(rank: int, steps: list[list[torch.Tensor]], rows: slice) -> dict:
    model = tiny_adco(seed=0, bank_size=10, bank_init="keys")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out: dict = {"losses": [], "banks": []}
    for views in steps:
        optimizer.zero_grad()
        loss, _, _ = model.ssl_step([v[rows] for v in views])
        loss.backward()
        for p in model.parameters():  # what DDP does: average the gradients of the ranks
            if p.grad is not None:
                p.grad = distributed.all_reduce_mean(p.grad)
        optimizer.step()
        model.after_batch()
        out["losses"].append(loss.detach())
        out["banks"].append(model.bank.weight.clone())
    out["key_encoder"] = [p.detach().clone() for p in model.key_encoder.parameters()]
    return out


def _worker(rank: int, world_size: int, batches, images) -> dict:
    rows = slice(rank * B, (rank + 1) * B)
    return {
        "rank": distributed.rank(),
        "bank": _run_bank(rank, batches, rows),
        "method": _run_method(rank, images, rows),
    }


@pytest.mark.slow
def test_bank_and_adco_under_two_ranks_match_one_process():
    batches, images = _bank_problem(), _method_images()
    results = run_ranks(_worker, world_size=WORLD, args=(batches, images))
    assert [r["rank"] for r in results] == [0, 1]

    # the pure bank: identical on the ranks, equal to one process holding the global batch
    single = _run_bank(0, batches, slice(None))
    assert [s["filled"] for s in single] == [6, 8, 8]
    for step, expected in enumerate(single):
        r0, r1 = results[0]["bank"][step], results[1]["bank"][step]
        assert torch.equal(r0["weight"], r1["weight"]) and torch.equal(r0["velocity"], r1["velocity"])
        assert r0["filled"] == r1["filled"] == expected["filled"]
        assert torch.allclose(r0["weight"], expected["weight"], atol=1e-6)
        assert torch.allclose(r0["velocity"], expected["velocity"], atol=1e-6)
    assert results[0]["bank"][-1]["velocity"].abs().sum() > 0

    # AdCo: each rank's loss is the mean over its B queries, so the ranks' mean is the one-process loss,
    # which holds only if rank 1's positives sit at columns B..2B-1 of the gathered keys
    reference = _run_method(0, images, slice(None))
    for step in range(len(images)):
        ranks_mean = (results[0]["method"]["losses"][step] + results[1]["method"]["losses"][step]) / 2
        assert torch.allclose(ranks_mean, reference["losses"][step], atol=1e-5)
        b0, b1 = results[0]["method"]["banks"][step], results[1]["method"]["banks"][step]
        assert torch.equal(b0, b1)
        assert torch.allclose(b0, reference["banks"][step], atol=1e-5)
    for p0, p1, p in zip(
        results[0]["method"]["key_encoder"], results[1]["method"]["key_encoder"], reference["key_encoder"], strict=True
    ):
        assert torch.equal(p0, p1) and torch.allclose(p0, p, atol=1e-5)


def test_local_index_labels_would_be_caught():
    """The check above can fail: with rank 1 labelling its queries from 0, the ranks' mean loss differs."""
    images = _method_images()[0]
    model = tiny_adco(seed=0, bank_size=10, bank_init="keys")
    with torch.no_grad():
        keys = F.normalize(model.key_encoder(images[1]), dim=1)  # (B_g, D)
        q = F.normalize(model.projector(model.backbone(images[0])), dim=1)  # (B_g, D)
        logits = q @ keys.T / model.negatives.temperature  # empty bank: only the keys
        right = F.cross_entropy(logits, torch.arange(WORLD * B))
        wrong = (F.cross_entropy(logits[:B], torch.arange(B)) + F.cross_entropy(logits[B:], torch.arange(B))) / 2
        whole = model.ssl_step(images)[0]
    assert torch.allclose(whole, right, atol=1e-6) and not torch.allclose(right, wrong, atol=1e-3)
