"""False-negative cancellation on the in-batch pool under DDP: two gloo ranks holding B images each must
detect against the *global* batch (top-k and threshold across ranks, FNC objective.py:63-82) and train
exactly like one process holding the 2B images; the ring likewise ranks the global columns."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from cssl.methods.simclr import SimCLR
from cssl.models.optim import OptimSettings
from tests.distributed.harness import run_ranks

WORLD = 2
B = 3  # rows per rank
D_IN, D_OUT = 5, 4
SETTINGS = {
    "eliminate": {"fnc": "eliminate", "fnc_top_k": 3, "fnc_threshold": 0.0},
    "attract": {"fnc": "attract", "fnc_top_k": 3, "fnc_threshold": 0.0},
    "ring_hcl": {"fnc": "eliminate", "fnc_top_k": 2, "fnc_threshold": None, "ring_outer": 0.75, "ring_inner": 0.2,
                 "estimator": "hcl", "tau_plus": 0.1, "beta": 1.0},
}  # fmt: skip
RTOL = 1e-5


class Identity(nn.Module):
    num_features = D_OUT

    def forward(self, x):
        return x


def _model(options: dict) -> SimCLR:
    return SimCLR(Identity(), num_classes=3, batch_size=B, optim=OptimSettings(), temperature=0.5, **options)


def _problem() -> dict:
    g = torch.Generator().manual_seed(11)
    encoder = nn.Linear(D_IN, D_OUT)
    with torch.no_grad():
        encoder.weight.copy_(torch.randn(D_OUT, D_IN, generator=g))
        encoder.bias.copy_(torch.randn(D_OUT, generator=g))
    x = torch.randn(WORLD * B, D_IN, generator=g)
    return {
        "x1": x + 0.3 * torch.randn(WORLD * B, D_IN, generator=g),  # two correlated views: real false negatives
        "x2": x + 0.3 * torch.randn(WORLD * B, D_IN, generator=g),
        "support": x[:, None] + 0.3 * torch.randn(WORLD * B, 2, D_IN, generator=g),  # (B_g, S, D_in)
        "state": encoder.state_dict(),
    }


def _run(encoder: nn.Module, model: SimCLR, x1, x2, support) -> torch.Tensor:
    model.negatives.support_embeddings = lambda encode: encoder(support).detach()  # (B, S, D_out): extra support views
    return model.selected_loss(encoder(x1), encoder(x2))


def _rank_worker(rank: int, world_size: int, problem: dict) -> dict:
    rows = slice(rank * B, (rank + 1) * B)
    out = {}
    for name, options in SETTINGS.items():
        encoder = nn.Linear(D_IN, D_OUT)
        encoder.load_state_dict(problem["state"])
        ddp = nn.parallel.DistributedDataParallel(encoder)
        model = _model(options)
        model.negatives.support_embeddings = lambda encode, m=encoder: m(problem["support"][rows]).detach()
        z = ddp(torch.cat([problem["x1"][rows], problem["x2"][rows]]))  # one forward per step
        loss = model.selected_loss(z[:B], z[B:])
        loss.backward()  # DDP averages the gradients over the ranks
        out[name] = {
            "loss": loss.detach(),
            "grad_weight": encoder.weight.grad.clone(),
            "grad_bias": encoder.bias.grad.clone(),
        }
    return out


@pytest.fixture(scope="module")
def problem() -> dict:
    return _problem()


@pytest.fixture(scope="module")
def ranks(problem: dict) -> list[dict]:
    return run_ranks(_rank_worker, world_size=WORLD, args=(problem,))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SETTINGS))
def test_fnc_under_ddp_matches_one_process_on_the_global_batch(ranks: list[dict], problem: dict, name: str) -> None:
    encoder = nn.Linear(D_IN, D_OUT)
    encoder.load_state_dict(problem["state"])
    loss = _run(encoder, _model(SETTINGS[name]), problem["x1"], problem["x2"], problem["support"])
    loss.backward()
    # equal B per rank: the global mean over anchors is the mean of the ranks' means
    torch.testing.assert_close(torch.stack([r[name]["loss"] for r in ranks]).mean(), loss.detach(), rtol=RTOL, atol=0)
    scale = encoder.weight.grad.abs().max()
    for r in ranks:
        torch.testing.assert_close(r[name]["grad_weight"], encoder.weight.grad, rtol=RTOL, atol=RTOL * scale)
        torch.testing.assert_close(r[name]["grad_bias"], encoder.bias.grad, rtol=RTOL, atol=RTOL * scale)


def test_detection_is_global_not_per_rank(problem: dict) -> None:
    """The parity above can only fail if detecting per rank differs: it does on this problem."""
    encoder = nn.Linear(D_IN, D_OUT)
    encoder.load_state_dict(problem["state"])
    with torch.no_grad():
        whole = _run(encoder, _model(SETTINGS["eliminate"]), problem["x1"], problem["x2"], problem["support"])
        halves = [
            _run(encoder, _model(SETTINGS["eliminate"]), problem["x1"][s], problem["x2"][s], problem["support"][s])
            for s in (slice(0, B), slice(B, 2 * B))
        ]
    assert abs(torch.stack(halves).mean().item() - whole.item()) > 1e-3
