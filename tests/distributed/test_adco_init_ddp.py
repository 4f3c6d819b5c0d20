"""method.bank_init=official under two real gloo ranks: the init pass equals one process on the global batch
(gradients averaged over ranks, keys gathered in rank order)."""

from __future__ import annotations

import pytest
import torch

from tests.distributed.harness import run_ranks
from tests.methods.adco_helpers import B
from tests.methods.test_adco_init import batches_of, official, run_init

WORLD = 2


def _rank_init(rank: int, world_size: int, batches) -> dict:
    model = official()
    steps, _ = run_init(model, batches, slice(rank * B, (rank + 1) * B))
    return {"steps": steps, "bank": model.bank.weight, "params": [p.detach() for p in model._online().parameters()]}


@pytest.mark.slow
def test_two_ranks_match_one_process_on_the_global_batch():
    batches = batches_of(3, batch=WORLD * B)
    results = run_ranks(_rank_init, world_size=WORLD, args=(batches,))
    model = official()
    steps, _ = run_init(model, batches)
    assert results[0]["steps"] == results[1]["steps"] == steps == 2  # ceil(10 / 8) with gathered keys
    for r in results:
        assert torch.allclose(r["bank"], model.bank.weight, atol=1e-5)
        for p, q in zip(r["params"], model._online().parameters(), strict=True):
            assert torch.allclose(p, q, atol=1e-5)
