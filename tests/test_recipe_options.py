"""Options that official recipes need: evaluation image size and normalisation constants as data keys."""

import pytest
import torch

from cssl.core.errors import ConfigError
from cssl.runtime import run
from tests.conftest import compose


def _data(overrides: list[str]):
    cfg = compose("train", ["logger=none", *overrides])
    data = run.build_data(cfg, train_split="pretrain", train_transform=None)
    return cfg, data


def test_eval_image_size_reaches_the_eval_transform_and_leaves_the_stem_alone():
    _, plain = _data([])
    cfg, data = _data(["data.eval_image_size=48"])
    assert cfg.data.eval_image_size == 48 and plain.eval_image_size == plain.image_size == 32
    assert data.image_size == 32 and data.eval_image_size == 48
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert data.eval_transform(x).shape == (2, 3, 48, 48)
    assert plain.eval_transform(x).shape == (2, 3, 32, 32)
    assert data.default_cifar_stem == plain.default_cifar_stem
    # STL-10's case: pretraining at 32 px keeps the CIFAR stem when evaluated at 96
    from cssl.data import build_datamodule

    stl = build_datamodule("stl10", image_size=32, eval_image_size=96)
    assert stl.default_cifar_stem and stl.eval_image_size == 96
    assert build_datamodule("stl10", image_size=32).eval_image_size == 32


def test_normalisation_constants_are_data_keys():
    cfg, data = _data([])
    assert list(cfg.data.mean) == [0.5, 0.5, 0.5] and data.mean == (0.5, 0.5, 0.5)
    for name, mean, std in (
        ("cifar10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        ("stl10", (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
        ("imagefolder", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ):
        composed = compose("train", [f"data={name}"]).data
        assert tuple(composed.mean) == mean and tuple(composed.std) == std
    _, data = _data(["data.mean=[0.4914,0.4822,0.4465]", "data.std=[0.2023,0.1994,0.2010]"])
    assert data.std == (0.2023, 0.1994, 0.2010)
    x = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    out = data.eval_transform(x)  # (1, 3, 32, 32)
    expected = (1 - torch.tensor(data.mean)) / torch.tensor(data.std)
    assert torch.allclose(out[0, :, 0, 0], expected)


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.eval_image_size=4", "data.eval_image_size"),
        ("data.mean=[0.5,0.5]", "data.mean"),
        ("data.std=[0.5,0.0,0.5]", "data.std"),
    ],
)
def test_bad_data_values_are_one_line_errors(override, key):
    with pytest.raises(ConfigError, match=key):
        _data([override])
