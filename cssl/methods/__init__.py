"""Methods registered by name. A method is wiring of parts: a pool of negatives, an estimator and,
where needed, a momentum encoder or a logits transform. DCL and HCL are estimator choices of the
in-batch method, so they share its class; their configs set the estimator."""

from __future__ import annotations

from cssl.core.errors import ConfigError
from cssl.methods.adco import AdCo
from cssl.methods.base import Method, ViewNeeds
from cssl.methods.byol import BYOL
from cssl.methods.contrast import ContrastiveMethod
from cssl.methods.moco import MoChi, MoCo
from cssl.methods.simclr import SimCLR

METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
    "dcl": SimCLR,
    "hcl": SimCLR,
    "adco": AdCo,
    "moco": MoCo,
    "mochi": MoChi,
    "byol": BYOL,
}


def register(name: str, cls: type[Method]) -> type[Method]:
    """Add a method under ``name`` (``method.name`` in its config); the registry's tests then cover it."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"register({name!r}, ...): {cls!r} is not a Method subclass")
    METHODS[name] = cls
    return cls


def list_methods() -> list[str]:
    return sorted(METHODS)


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}: choose method= one of {', '.join(list_methods())}")
    return METHODS[name]


__all__ = ["METHODS", "ContrastiveMethod", "Method", "ViewNeeds", "list_methods", "method_class", "register"]
