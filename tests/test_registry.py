"""Every registered backbone, method and config builds and runs: a new entry is tested without new tests."""

import math

import pytest
import torch

from cssl.methods import METHODS, ContrastiveMethod
from cssl.models.backbones import build_backbone, list_backbones
from cssl.pretrain import pretrain
from tests.conftest import REPO, compose

#: Two training steps, one validation batch, every metric and diagnostic logged.
TWO_STEPS = (
    "logger=none",
    "trainer.progress_bar=false",
    "trainer.max_steps=2",
    "trainer.limit_val_batches=1",
    "data.batch_size=16",
    "data.bank_limit=64",
    "trainer.log_every_n_steps=1",
    "diagnostics.every_n_steps=1",
)


@pytest.mark.parametrize("name", [*list_backbones(), "timm:resnet10t"])
@pytest.mark.parametrize("cifar_stem", [False, True])
def test_backbones_build_and_map_images_to_features(name, cifar_stem):
    net = build_backbone(name, cifar_stem=cifar_stem).eval()
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, net.num_features)
    if not name.startswith("timm:"):
        assert (net.conv1.kernel_size, net.conv1.stride) == (((3, 3), (1, 1)) if cifar_stem else ((7, 7), (2, 2)))
        assert isinstance(net.maxpool, torch.nn.Identity) == cifar_stem


def test_every_method_has_a_config_and_every_config_a_method():
    configs = {p.stem for p in (REPO / "configs" / "method").glob("*.yaml")} - {"common"}
    assert configs == set(METHODS)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.slow
def test_every_method_trains_a_few_steps(method, tmp_path):
    cfg = compose(
        "train",
        [
            f"method={method}",
            *TWO_STEPS,
            f"run_dir={tmp_path}",
        ],
    )
    summary = pretrain(cfg)
    assert summary["method"] == method and summary["global_step"] == 2
    assert math.isfinite(summary["train_loss"])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    # every method with negatives reports the standard negative-sampling diagnostics; every method the
    # validation ones
    negatives = (
        "neg/pos_sim_mean",
        "neg/neg_sim_mean",
        "neg/neg_sim_std",
        "neg/neg_sim_max",
        "neg/hardness",
        "neg/effective_negatives",
    )
    for key in (
        *(negatives if issubclass(METHODS[method], ContrastiveMethod) else ()),
        "val/uniformity",
        "val/alignment",
        "val/false_negative_rate",
    ):
        assert math.isfinite(summary["metrics"][key]), key
    if not issubclass(
        METHODS[method], ContrastiveMethod
    ):  # its own diagnostics (<method>/...), none of negative sampling
        assert summary["estimator"] is None and not any(k.startswith("neg/") for k in summary["metrics"])
        assert any(k.startswith(f"{method}/") for k in summary["metrics"])
    elif summary["estimator"] != "infonce":
        assert 0 <= summary["metrics"]["neg/floor_fraction"] <= 1
    assert (tmp_path / "embedding.png").stat().st_size > 1000


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml")))
def test_every_experiment_config_composes_and_its_objects_build(experiment):
    from omegaconf import OmegaConf

    from cssl.methods import method_class
    from cssl.models.optim import OptimSettings

    cfg = compose("train", [f"experiment={experiment}"])
    assert cfg.method.name in METHODS and cfg.data.name
    method_class(cfg.method.name)
    OptimSettings(**{k: (tuple(v) if k == "betas" else v) for k, v in OmegaConf.to_container(cfg.optimizer).items()})


@pytest.mark.parametrize("method", sorted(m for m in METHODS if issubclass(METHODS[m], ContrastiveMethod)))
@pytest.mark.slow
def test_every_method_trains_with_negative_selection_and_the_curriculum(method, tmp_path):
    fnc = "eliminate" if method == "adco" else "attract"  # attraction is undefined with the adversarial bank
    cfg = compose(
        "train",
        [
            f"method={method}",
            f"method.fnc={fnc}",
            "method.fnc_support_views=1",
            "method.ring_outer=0.5",
            "method.curriculum=linear",
            "backbone=timm:test_resnet",
            "method.proj_hidden_dim=32",
            *TWO_STEPS,
            "diagnostics.embedding=false",
            f"run_dir={tmp_path}",
        ],
    )
    summary = pretrain(cfg)
    assert summary["global_step"] == 2 and math.isfinite(summary["train_loss"])
    for key in ("neg/fnc_cancelled", "neg/fnc_precision", "neg/ring_kept", "neg/ring_empty", "curriculum/h"):
        assert 0 <= summary["metrics"][key] <= 1, key
