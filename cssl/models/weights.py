"""Starting weights for a backbone (``backbone_init=PATH``): read a state dict from any of the files people
hold (a torchvision or timm state dict, a ``.safetensors`` file, a timm export folder, a cssl export or
checkpoint) and load it strictly, or say in one line why it does not fit.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cssl.core.errors import ConfigError

#: Files of a folder that holds weights, in the order they are looked for (timm's save_for_hf names).
FOLDER_FILES = ("model.safetensors", "pytorch_model.bin", "backbone.safetensors", "backbone.pth")
#: Keys that wrap a state dict in common checkpoint files.
WRAPPERS = ("state_dict", "model", "module")
SHOWN = 3  # mismatching keys named in an error


def sha256(path: Path) -> str:
    """The SHA-256 of a file, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_init_path(value: Any, key: str = "backbone_init") -> Path | None:
    """``None``, or the weights file ``value`` names (a file or a folder of :data:`FOLDER_FILES`).

    Raises:
        ConfigError: the path does not exist, or a folder holds no weights file.
    """
    if value in (None, "", "null"):
        return None
    path = Path(str(value))
    if not path.exists():
        raise ConfigError(f"{key}={path}: no such file; pass a state dict (.pth/.pt/.safetensors) or an export folder")
    if path.is_dir():
        found = next((path / name for name in FOLDER_FILES if (path / name).is_file()), None)
        if found is None:
            raise ConfigError(f"{key}={path}: the folder holds none of {', '.join(FOLDER_FILES)}")
        return found
    return path


def read_state_dict(path: Path, key: str = "backbone_init") -> dict[str, Tensor]:
    """The tensors of a weights file: safetensors, or a ``torch.save`` state dict (weights-only loading),
    unwrapped from ``state_dict``/``model``/``module`` and, for a cssl checkpoint, its ``backbone.`` prefix.

    Raises:
        ConfigError: unreadable, holds objects other than tensors, or holds no tensors.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # noqa: BLE001 - any failure means an unreadable file
            raise ConfigError(f"{key}={path}: not a readable safetensors file ({type(err).__name__})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "unsupported global" not in str(err).lower():  # not a pickle of objects at all
            raise ConfigError(f"{key}={path}: unreadable (not a torch.save file); is it a state dict?") from None
        raise ConfigError(
            f"{key}={path}: refused, it holds objects that are not weights (a detectron2 .pkl is not a "
            "starting point; export the backbone as format=torchvision or safetensors)"
        ) from None
    except Exception as err:  # noqa: BLE001 - any other failure means an unreadable file
        raise ConfigError(f"{key}={path}: unreadable ({type(err).__name__}); is it a state dict?") from None
    cssl_checkpoint = isinstance(obj, dict) and "cssl" in obj and "state_dict" in obj
    for _ in range(2):  # {"state_dict": {"model": ...}} and the like
        if isinstance(obj, dict):
            inner = next((obj[w] for w in WRAPPERS if isinstance(obj.get(w), dict)), None)
            obj = inner if inner is not None and not _is_state_dict(obj) else obj
    if not _is_state_dict(obj):
        raise ConfigError(f"{key}={path}: holds no state dict (a mapping of names to tensors)")
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if cssl_checkpoint:
        state = backbone_weights(state)
    elif state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def backbone_weights(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The backbone's tensors of a cssl checkpoint's ``state_dict`` (its ``backbone.`` keys, prefix dropped)."""
    return {k[len("backbone.") :]: v for k, v in state_dict.items() if k.startswith("backbone.")}


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and any(isinstance(v, Tensor) for v in obj.values())


def classifier_prefix(backbone: nn.Module) -> str | None:
    """The name of the classifier the backbone dropped (torchvision ``fc``, timm's ``pretrained_cfg`` entry)."""
    cfg = getattr(backbone, "pretrained_cfg", None)
    if isinstance(cfg, dict) and isinstance(cfg.get("classifier"), str):
        return cfg["classifier"]
    return "fc" if isinstance(getattr(backbone, "fc", None), nn.Identity) else None


def load_init(
    backbone: nn.Module, path: Path, *, name: str, cifar_stem: bool, key: str = "backbone_init"
) -> dict[str, Any]:
    """Load the weights of ``path`` into ``backbone`` strictly (a classifier the backbone does not have is
    dropped, and said so); returns what the run records: path, SHA-256, dropped keys.

    Raises:
        ConfigError: missing file, a CIFAR-stem mismatch, or another architecture (the first mismatching keys).
    """
    file = check_init_path(path, key)
    assert file is not None
    state = read_state_dict(file, key)
    own = backbone.state_dict()
    head = classifier_prefix(backbone)
    dropped = sorted(k for k in state if k not in own and head is not None and k.startswith(head + "."))
    state = {k: v for k, v in state.items() if k not in dropped}
    stem = own.get("conv1.weight")
    if stem is not None and not name.startswith("timm:") and state.get("conv1.weight") is not None:
        theirs = tuple(state["conv1.weight"].shape)
        if theirs != tuple(stem.shape) and len(theirs) == 4 and theirs[-1] in (3, 7):
            has = "the CIFAR stem (3x3 conv1)" if theirs[-1] == 3 else "the ImageNet stem (7x7 conv1)"
            want = "true" if theirs[-1] == 3 else "false"
            raise ConfigError(
                f"{key}={path}: the weights have {has}, this run's {name} does not; pass cifar_stem={want}"
            )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:SHOWN])}" + (" ..." if len(missing) > SHOWN else ""))
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:SHOWN])}" + (" ..." if len(unexpected) > SHOWN else ""))
        for k in shapes[:SHOWN]:
            parts.append(f"{k} is {tuple(state[k].shape)}, the backbone's {tuple(own[k].shape)}")
        stem_note = f", cifar_stem={str(cifar_stem).lower()}" if not name.startswith("timm:") else ""
        raise ConfigError(
            f"{key}={path} does not fit backbone={name}{stem_note} ({len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(shapes)} of another shape): {'; '.join(parts)}"
        )
    backbone.load_state_dict(state, strict=True)
    return {"path": str(path), "file": str(file), "sha256": sha256(file), "dropped": dropped}
