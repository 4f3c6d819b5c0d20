"""method.per_view_forward: the views of a step forwarded one at a time (BN statistics per view)."""

import copy

import pytest
import torch

from cssl.contrastive import nt_xent
from cssl.core.errors import ConfigError
from cssl.methods import METHODS
from cssl.models.optim import OptimSettings
from tests.conftest import TinyNet


def _model(name: str, per_view: bool, **kwargs):
    torch.manual_seed(0)
    extra = {"adco": {"bank_size": 8, "bank_init": "random"}}.get(name, {})
    return METHODS[name](
        TinyNet(6),  # BN in train mode normalises with the statistics of whatever batch it sees
        num_classes=3,
        batch_size=4,
        optim=OptimSettings(),
        proj_hidden_dim=8,
        per_view_forward=per_view,
        **extra,
        **kwargs,
    ).train()


def _views(n: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 8, 8, generator=g) * (1 + v) + v for v in range(n)]  # views differ in statistics


def test_per_view_forward_equals_separate_forwards_and_differs_from_the_joint_one():
    views = _views()
    model = _model("simclr", per_view=True)
    separate = copy.deepcopy(model)
    feats, z = model.encode_views(views, model.projector)  # (2B, F), (2B, D)
    f1, f2 = separate.backbone(views[0]), separate.backbone(views[1])
    assert torch.allclose(feats, torch.cat([f1, f2]), atol=1e-6)
    assert torch.allclose(z, torch.cat([separate.projector(f1), separate.projector(f2)]), atol=1e-6)
    joint = _model("simclr", per_view=False)
    feats_joint, _ = joint.encode_views(views, joint.projector)
    assert torch.allclose(feats_joint, joint.backbone(torch.cat(views)), atol=1e-6)
    assert not torch.allclose(feats_joint, feats, atol=1e-3)


def test_simclr_loss_from_per_view_projections():
    views = _views()
    model = _model("hcl", per_view=True, estimator="hcl", temperature=0.5, tau_plus=0.1, beta=1.0)
    reference = copy.deepcopy(model)
    loss, feats, _ = model.ssl_step(views)
    z1 = reference.projector(reference.backbone(views[0]))  # (B, D)
    z2 = reference.projector(reference.backbone(views[1]))  # (B, D)
    expected = nt_xent(z1, z2, 0.5, estimator="hcl", tau_plus=0.1, beta=1.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(feats, reference.backbone(views[0]), atol=1e-6)


@pytest.mark.parametrize("per_view", [False, True])
def test_adco_symmetric_and_multicrop_query_passes(per_view):
    sizes = []
    model = _model("adco", per_view=per_view, symmetric=True)
    model.backbone.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    views = [*_views(2), torch.randn(4, 3, 6, 6), torch.randn(4, 3, 6, 6)]
    model.ssl_step(views)
    # query passes of the online backbone (the key encoder is a copy, not hooked)
    assert sizes == ([4, 4, 4, 4] if per_view else [8, 8])


def test_bad_value():
    with pytest.raises(ConfigError, match="per_view_forward"):
        _model("simclr", per_view="yes")


def test_the_config_key_reaches_the_method():
    from cssl.pretrain import build_method
    from tests.conftest import compose

    cfg = compose(
        "train", ["method=hcl", "method.per_view_forward=true", "method.proj_hidden_dim=8", "backbone=timm:test_resnet"]
    )
    assert build_method(cfg, num_classes=10, batch_size=4, cifar_stem=False).per_view_forward is True
    assert compose("train", ["method=adco"]).method.per_view_forward is False
