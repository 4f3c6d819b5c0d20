import random

import numpy as np
import pytest
import torch

from cssl.core.errors import ConfigError
from cssl.runtime.checkpoint import RNGState, atomic_save, find_checkpoint, read_checkpoint


def test_atomic_save_never_leaves_a_truncated_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_save({"state_dict": {"w": torch.ones(3)}, "cssl": {}}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"state_dict": {"w": torch.zeros(3)}, "cssl": {}}, path)
    monkeypatch.undo()
    assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_find_checkpoint_takes_the_newest_and_last_on_a_tie(tmp_path):
    import os

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    with pytest.raises(ConfigError, match="no checkpoint"):
        find_checkpoint(tmp_path)
    for name, mtime in (("epoch0000.ckpt", 100), ("last.ckpt", 100)):
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, (mtime, mtime))
    assert find_checkpoint(tmp_path).name == "last.ckpt"
    (folder / "last-v1.ckpt").write_bytes(b"y")  # written by a resumed copy of the run dir
    os.utime(folder / "last-v1.ckpt", (200, 200))
    assert find_checkpoint(tmp_path).name == "last-v1.ckpt"
    assert find_checkpoint(folder / "epoch0000.ckpt").name == "epoch0000.ckpt"


def test_rng_state_round_trips_every_generator():
    cb = RNGState()
    state = cb.state_dict()
    first = (random.random(), np.random.rand(), torch.rand(2))
    cb.load_state_dict(state)
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])


def test_rng_state_is_weights_only_loadable(tmp_path):
    path = tmp_path / "x.ckpt"
    torch.save({"rng": RNGState().state_dict()}, path)
    torch.load(path, weights_only=True)
