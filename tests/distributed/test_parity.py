"""Two gloo ranks holding B rows each must train exactly like one process holding the 2B rows.

One spawn of two ranks computes everything (loss, DDP-averaged gradients, the layout of the logits, the
cross-rank shuffle); the tests below check its parts against a single-process reference built here, in
the parent process, and against the float64 loop reference of tests/contrastive/reference.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cssl.contrastive.losses import in_batch_similarities, nt_xent
from cssl.core import distributed
from tests.contrastive.reference import reference_nt_xent
from tests.distributed.harness import run_ranks

WORLD = 2
B = 3  # rows per rank (odd, so that an offset mistake cannot hide behind a symmetry)
D_IN, D_OUT = 5, 4
TEMPERATURE = 0.5
ESTIMATORS = {
    "infonce": {},
    "dcl": {"tau_plus": 0.1},
    "hcl": {"tau_plus": 0.1, "beta": 1.0},
}
SHUFFLE_B = 6  # rows per rank in the shuffle check
RTOL = 1e-5


def _problem() -> dict:
    g = torch.Generator().manual_seed(7)
    encoder = nn.Linear(D_IN, D_OUT)
    with torch.no_grad():
        encoder.weight.copy_(torch.randn(D_OUT, D_IN, generator=g))
        encoder.bias.copy_(torch.randn(D_OUT, generator=g))
    return {
        "x1": torch.randn(WORLD * B, D_IN, generator=g),  # (B_g, D_in) first view of the global batch
        "x2": torch.randn(WORLD * B, D_IN, generator=g),  # (B_g, D_in) second view
        "state": encoder.state_dict(),
    }


def _rank_worker(rank: int, world_size: int, problem: dict) -> dict:
    """Runs on each rank: its slice of the global batch through a DDP-wrapped Linear, every estimator."""
    rows = slice(rank * B, (rank + 1) * B)
    x1, x2 = problem["x1"][rows], problem["x2"][rows]  # (B, D_in) each
    out: dict = {"rank": distributed.rank(), "world": distributed.world_size(), "estimators": {}}
    for name, options in ESTIMATORS.items():
        encoder = nn.Linear(D_IN, D_OUT)
        encoder.load_state_dict(problem["state"])
        model = nn.parallel.DistributedDataParallel(encoder)
        z = model(torch.cat([x1, x2]))  # (2B, D_out): one forward per step, as in SimCLR
        loss = nt_xent(z[:B], z[B:], TEMPERATURE, estimator=name, **options)
        loss.backward()  # DDP averages the parameter gradients over the ranks
        out["estimators"][name] = {
            "loss": loss.detach(),
            "grad_weight": encoder.weight.grad.clone(),
            "grad_bias": encoder.bias.grad.clone(),
        }

    with torch.no_grad():
        z = encoder(torch.cat([x1, x2]))  # (2B, D_out)
    pos, sim, neg_mask = in_batch_similarities(z[:B], z[B:])
    out["layout"] = {"pos": pos.detach(), "sim": sim.detach(), "neg_mask": neg_mask}

    # cross-rank shuffle: rows hold their global index; ranks seed differently so only the broadcast agrees
    torch.manual_seed(100 + rank)
    x = (torch.arange(SHUFFLE_B) + rank * SHUFFLE_B).float()[:, None].repeat(1, 2)  # (B, 2)
    shuffled, undo = distributed.shuffle_batch(x)
    out["shuffle"] = {
        "x": x,
        "shuffled": shuffled,
        "undo": undo,
        "restored": distributed.unshuffle_batch(shuffled, undo),
    }

    # the gathered tensor shares its incoming gradient with another branch (y + v): that branch's gradient
    # must stay this rank's own, whatever the gather's backward does with its copy
    leaf, other = torch.ones(2, 3, requires_grad=True), torch.zeros(2 * world_size, 3, requires_grad=True)
    v = other * 2  # built before the gather, so autograd runs its backward after the gather's
    y = distributed.gather_with_grad(leaf)  # (P*2, 3)
    ((y + v) * float(rank + 1)).sum().backward()
    out["branch"] = {"other_grad": other.grad, "leaf_grad": leaf.grad}
    return out


@pytest.fixture(scope="module")
def problem() -> dict:
    return _problem()


@pytest.fixture(scope="module")
def ranks(problem: dict) -> list[dict]:
    return run_ranks(_rank_worker, world_size=WORLD, args=(problem,))


def _reference(problem: dict, estimator: str) -> dict:
    """One process, the whole global batch: loss = mean over all 2B_g anchors, plain autograd."""
    encoder = nn.Linear(D_IN, D_OUT)
    encoder.load_state_dict(problem["state"])
    z1, z2 = encoder(problem["x1"]), encoder(problem["x2"])  # (B_g, D_out) each
    loss = nt_xent(z1, z2, TEMPERATURE, estimator=estimator, **ESTIMATORS[estimator])
    loss.backward()
    return {"loss": loss.detach(), "grad_weight": encoder.weight.grad, "grad_bias": encoder.bias.grad, "z": (z1, z2)}


def test_ranks_see_a_real_group(ranks: list[dict]) -> None:
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == WORLD for r in ranks)


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_loss_matches_one_process_on_the_global_batch(ranks: list[dict], problem: dict, estimator: str) -> None:
    ref = _reference(problem, estimator)
    # each rank's loss is the mean over its 2B anchors; equal B, so the global mean is their mean
    distributed_loss = torch.stack([r["estimators"][estimator]["loss"] for r in ranks]).mean()
    torch.testing.assert_close(distributed_loss, ref["loss"], rtol=RTOL, atol=0)
    # the single-process value itself against the float64 loop formulation of METHODS.md
    z1, z2 = (z.detach().double().numpy() for z in ref["z"])
    expected = reference_nt_xent(z1, z2, TEMPERATURE, estimator, **ESTIMATORS[estimator])
    assert ref["loss"].item() == pytest.approx(expected, rel=RTOL)


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_ddp_averaged_gradients_match_one_process(ranks: list[dict], problem: dict, estimator: str) -> None:
    ref = _reference(problem, estimator)
    scale = ref["grad_weight"].abs().max()
    for r in ranks:
        got = r["estimators"][estimator]
        torch.testing.assert_close(got["grad_weight"], ref["grad_weight"], rtol=RTOL, atol=RTOL * scale)
        torch.testing.assert_close(got["grad_bias"], ref["grad_bias"], rtol=RTOL, atol=RTOL * scale)


def test_logits_are_local_anchors_against_global_candidates(ranks: list[dict], problem: dict) -> None:
    encoder = nn.Linear(D_IN, D_OUT)
    encoder.load_state_dict(problem["state"])
    with torch.no_grad():
        c1 = F.normalize(encoder(problem["x1"]), dim=1)  # (B_g, D_out) view 1 of every rank
        c2 = F.normalize(encoder(problem["x2"]), dim=1)
    b_g = WORLD * B
    for rank, r in enumerate(ranks):
        sim, mask, pos = r["layout"]["sim"], r["layout"]["neg_mask"], r["layout"]["pos"]
        assert sim.shape == (2 * B, 2 * b_g) and mask.shape == (2 * B, 2 * b_g)
        rows = slice(rank * B, (rank + 1) * B)
        anchors = torch.cat([c1[rows], c2[rows]])  # (2B, D)
        candidates = torch.cat([c1, c2])  # (2B_g, D): [view 1 of ranks 0..P-1, view 2 of ranks 0..P-1]
        torch.testing.assert_close(sim, anchors @ candidates.T, rtol=RTOL, atol=1e-6)
        # N = 2B_g - 2 negatives on every row
        assert mask.sum(1).tolist() == [2 * b_g - 2] * (2 * B)
        for i in range(2 * B):
            own = rank * B + i % B  # global index of the anchor's image
            self_col = own if i < B else b_g + own
            pos_col = b_g + own if i < B else own
            assert set((~mask[i]).nonzero().flatten().tolist()) == {self_col, pos_col}
            assert sim[i, self_col].item() == pytest.approx(1.0, abs=1e-6)
            assert pos[i].item() == pytest.approx(float(c1[own] @ c2[own]), abs=1e-6)


def test_shuffle_uses_rank_zero_permutation_and_unshuffle_restores(ranks: list[dict]) -> None:
    shuffles = [r["shuffle"] for r in ranks]
    undo = shuffles[0]["undo"]
    assert torch.equal(undo, shuffles[1]["undo"]), "both ranks must apply the same permutation"
    torch.manual_seed(100)  # rank 0's seed: its permutation is the one broadcast
    assert torch.equal(torch.argsort(undo), torch.randperm(WORLD * SHUFFLE_B))
    originals = torch.cat([s["x"] for s in shuffles])[:, 0]  # (B_g,) global row indices
    shuffled = torch.cat([s["shuffled"] for s in shuffles])[:, 0]
    assert sorted(shuffled.tolist()) == originals.tolist(), "the shuffle must be a permutation of the global batch"
    assert torch.equal(shuffled, originals[torch.argsort(undo)])
    for rank, s in enumerate(shuffles):
        came_from = (s["shuffled"][:, 0] // SHUFFLE_B).long()
        assert (came_from != rank).any(), f"rank {rank} kept only its own rows: nothing moved between ranks"
        assert torch.equal(s["restored"], s["x"])


def test_gather_backward_leaves_other_branches_gradients_alone(ranks: list[dict]) -> None:
    for rank, r in enumerate(ranks):
        # d/d other of sum((y + 2 other) * (rank+1)) = 2 (rank+1): a local quantity, never summed over ranks
        assert torch.equal(r["branch"]["other_grad"], torch.full((2 * WORLD, 3), 2.0 * (rank + 1)))
        # d/d leaf: summed over ranks, sum_r (r+1) = 3
        assert torch.equal(r["branch"]["leaf_grad"], torch.full((2, 3), 3.0))
