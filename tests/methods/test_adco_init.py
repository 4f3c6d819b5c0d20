"""method.bank_init=official: AdCo's init_memory pass (training/train.py:247-305)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from cssl.core import distributed
from cssl.core.errors import ConfigError
from tests.methods.adco_helpers import MOCO_T, B, tiny_adco

K = 10


def batches_of(n: int, batch: int = B, seed: int = 3) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, 3, 8, 8, generator=g) for _ in range(2)] for _ in range(n)]


def official(**kwargs):
    return tiny_adco(seed=0, bank_size=K, bank_init="official", **kwargs)


def test_init_loss_is_the_cross_entropy_against_the_random_bank():
    model = official()
    views = batches_of(1)[0]
    reference = copy.deepcopy(model)
    loss, keys = model.bank_init_loss(views)
    # the EMA step of the official forward comes first; with equal weights it changes nothing
    q = F.normalize(reference.projector(reference.backbone(views[0])), dim=1)  # (B, D)
    k = F.normalize(reference.key_encoder(views[1]), dim=1)  # (B, D)
    d = F.normalize(reference.bank.weight, dim=0)  # (D, K): every random column is a negative
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ d], dim=1) / MOCO_T  # (B, 1 + K)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, torch.zeros(B, dtype=torch.long)).item(), rel=1e-5)
    assert torch.allclose(keys, k, atol=1e-6)


def run_init(model, batches, rows=slice(None)):
    """initialise_bank with SGD over ``batches`` (rows ``rows`` of each); (steps, keys written)."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    keys = []
    original = model.bank.write

    def spy(k, start):
        keys.append(k.clone())
        return original(k, start)

    model.bank.write = spy
    steps = model.initialise_bank([[v[rows] for v in views] for views in batches], optimizer)
    return steps, torch.cat(keys)


def test_bank_filled_with_the_keys_and_key_encoder_equal_to_the_online_one():
    model = official()
    start = [p.detach().clone() for p in model.backbone.parameters()]
    assert model.bank.needs_initialisation() and not torch.allclose(model.bank.weight.norm(dim=0), torch.ones(K))
    steps, keys = run_init(model, batches_of(5))
    assert steps == 3  # ceil(K / B) = ceil(10 / 4): the pass stops when the bank is full
    assert torch.allclose(model.bank.weight, keys[:K].T)  # the gathered keys, in order
    assert torch.equal(model.bank.velocity, torch.zeros_like(model.bank.velocity))
    assert not model.bank.needs_initialisation() and int(model.bank.filled) == K
    for key_param, param in zip(model.key_encoder.parameters(), model._online().parameters(), strict=True):
        assert torch.equal(key_param, param)
    assert any(not torch.equal(a, b) for a, b in zip(start, model.backbone.parameters(), strict=True))  # it trained


def test_a_short_pass_leaves_the_rest_of_the_bank_random():
    model = official()
    random_columns = model.bank.weight[:, B:].clone()
    assert run_init(model, batches_of(1))[0] == 1
    assert torch.equal(model.bank.weight[:, B:], random_columns)


def test_inside_lightning_before_the_first_step_and_not_on_resume(tmp_path):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    images = batches_of(4)

    class Views(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(images) * B

        def __getitem__(self, i: int):
            return [images[i // B][0][i % B], images[i // B][1][i % B]], 0

    seen: dict = {}

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if "bank" not in seen:
                seen["bank"] = module.bank.weight.clone()
                seen["equal"] = all(
                    torch.equal(a, b)
                    for a, b in zip(module.key_encoder.parameters(), module._online().parameters(), strict=True)
                )

    model = official()
    before = model.bank.weight.clone()
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Probe()],
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, train_dataloaders=DataLoader(Views(), batch_size=B, shuffle=False))
    assert seen["equal"] and not torch.equal(seen["bank"], before)
    assert torch.allclose(seen["bank"].norm(dim=0), torch.ones(K))  # every column a unit key
    assert model.global_step == 1  # the init steps are not training steps
    state = model.state_dict()
    resumed = official()
    resumed.load_state_dict(state)
    assert not resumed.bank.needs_initialisation()


def test_unknown_bank_init():
    with pytest.raises(ConfigError, match="bank_init"):
        tiny_adco(bank_init="warm")


def test_gradient_average_is_a_no_op_on_one_process():
    model = official()
    model.bank_init_loss(batches_of(1)[0])[0].backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model._average_gradients()
    assert distributed.world_size() == 1
    assert all(
        torch.equal(a, p.grad)
        for a, p in zip(grads, [p for p in model.parameters() if p.grad is not None], strict=True)
    )


@pytest.mark.slow
def test_train_py_runs_the_pass_through_the_data_module(tmp_path):
    from tests.conftest import QUICK, load_checkpoint, train_inprocess

    args = ["method=adco", "method.bank_init=official", "method.bank_size=64", "trainer.max_steps=1"]
    train_inprocess(*QUICK, *args, f"run_dir={tmp_path}")
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 1 and bool(ckpt["state_dict"]["bank.initialised"])
