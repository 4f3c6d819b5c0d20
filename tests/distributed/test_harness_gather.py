import torch

from cssl.core import distributed
from tests.distributed.harness import run_ranks


def _gather_rows(rank: int, world_size: int) -> dict:
    x = torch.full((2, 3), float(rank), requires_grad=True)
    gathered = distributed.gather_with_grad(x)  # (4, 3)
    # each rank weights the rows differently, so the summed gradient tells whether backward sums ranks
    weights = torch.arange(gathered.shape[0], dtype=torch.float32)[:, None] * (rank + 1)
    (gathered * weights).sum().backward()
    return {
        "rank": distributed.rank(),
        "world": distributed.world_size(),
        "gathered": gathered.detach(),
        "grad": x.grad,
    }


def test_gather_with_grad_orders_by_rank_and_sums_gradients():
    results = run_ranks(_gather_rows, world_size=2)
    for rank, out in enumerate(results):
        assert out["rank"] == rank and out["world"] == 2
        assert torch.equal(out["gathered"][:, 0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
        # rows of this rank are 2*rank and 2*rank+1; d/dx = sum over ranks r of (r+1) * row index
        rows = torch.tensor([2.0 * rank, 2.0 * rank + 1])
        expected = (rows * (1 + 2))[:, None].expand(2, 3)
        assert torch.equal(out["grad"], expected)


def test_single_process_fallbacks():
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.gather_with_grad(x) is x
    assert torch.equal(distributed.gather(x), x.detach())
    shuffled, undo = distributed.shuffle_batch(x.detach())
    assert torch.equal(distributed.unshuffle_batch(shuffled, undo), x.detach())
