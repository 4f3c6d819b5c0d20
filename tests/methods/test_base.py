from types import SimpleNamespace

import pytest
import torch

from cssl.contrastive import info_nce
from cssl.contrastive.estimators import annealed_beta
from cssl.core.errors import ConfigError
from cssl.methods import METHODS, ContrastiveMethod
from cssl.models.optim import OptimSettings
from tests.conftest import TinyNet


def _tiny(name: str, **kwargs):
    net = TinyNet(4, bn=False, relu=False, padding=0)
    extra = {"moco": {"queue_size": 8}, "mochi": {"queue_size": 8, "n_hard": 4}, "adco": {"bank_size": 8}}
    return METHODS[name](
        net, num_classes=3, batch_size=4, optim=OptimSettings(), proj_hidden_dim=8, **extra.get(name, {}), **kwargs
    )


WITH_NEGATIVES = sorted(name for name, cls in METHODS.items() if issubclass(cls, ContrastiveMethod))
WITHOUT_NEGATIVES = sorted(set(METHODS) - set(WITH_NEGATIVES))


@pytest.mark.parametrize("name", WITH_NEGATIVES)
def test_every_method_takes_every_estimator_and_anneals_beta(name):
    model = _tiny(name, estimator="hcl", tau_plus=0.1, beta=0.9, beta_anneal=True)
    assert model.negatives.beta() == 0.9  # no trainer yet
    model._trainer = SimpleNamespace(max_epochs=400, max_steps=-1, current_epoch=200)
    assert model.negatives.beta() == pytest.approx(annealed_beta(0.9, 200, 400)) == pytest.approx(0.9 * 5 / 8)
    pos, neg = torch.rand(3) * 2 - 1, torch.rand(3, 5) * 2 - 1
    expected = info_nce(pos, neg, model.negatives.temperature, estimator="hcl", tau_plus=0.1, beta=0.9 * 5 / 8)
    assert model.negatives.loss(pos, neg).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_validates_the_estimator(name):
    with pytest.raises(ConfigError, match="tau_plus"):
        _tiny(name, estimator="dcl", tau_plus=1.0)


@pytest.mark.parametrize("name", WITHOUT_NEGATIVES)
def test_methods_without_negatives_refuse_every_estimator_option(name):
    for option in ({"estimator": "hcl"}, {"tau_plus": 0.1}, {"beta": 0.9}, {"beta_anneal": True}, {"temperature": 0.2}):
        with pytest.raises(ConfigError, match=f"method.{next(iter(option))}: not applicable"):
            _tiny(name, **option)
    assert not hasattr(_tiny(name), "negatives")  # no estimator
