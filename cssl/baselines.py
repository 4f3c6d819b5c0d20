"""Reference accuracies for a report: a randomly initialised backbone, the raw pixels and, for runs that started
from weights (``backbone_init``), those weights, under the same kNN
and linear protocols as the runs, cached on disk.

A pretraining run's ``val/knn_top1`` is the weighted kNN (``method.knn_k``, ``method.knn_t``) of the backbone's
features of the held-out images against the labelled train images (the kNN bank, ``data.bank_limit``), both
through the data's evaluation transform. The baselines compute exactly that with
:func:`cssl.eval.knn.knn_predict`, for

- ``random_init``: the run's architecture (``backbone``, ``cifar_stem``, ``zero_init_residual``) built after
  seeding with the run's ``seed``, in eval mode, never trained;
- ``raw_pixels``: the normalised evaluation images flattened;
- ``starting_weights``: the run's architecture with the ``backbone_init`` weights loaded as pretraining loads
  them (what domain-adaptive pretraining started from), keyed by the file's SHA-256.

The linear baseline is cssl's :class:`~cssl.eval.probe.LinearProbe` (affine-free BN then a linear layer,
SGD 0.1 x batch/256, momentum 0.9, no weight decay, cosine: configs/linear_eval.yaml's default protocol) with
a fixed small budget (:data:`LINEAR_BUDGET`: 30 epochs, validated every 10, batch 256) trained on the
features of the un-augmented labelled images, computed once (cheap: no backbone in the loop, seconds on a CPU
for digits). ``linear_top1`` is the last validation's top-1, ``linear_top1_best`` the best one's, as
``linear_eval.py`` reports them.

Results are keyed by a hash of everything they depend on (dataset and its image options, architecture, seed,
kNN and linear protocols) and stored as ``<hash>.json`` under the cache folder.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from cssl.core.errors import ConfigError

#: Bump when the computation changes: old cache entries are then not reused.
VERSION = 1
KINDS = ("random_init", "raw_pixels", "starting_weights")  # the last only for runs with backbone_init
#: The linear baseline's fixed budget (documented in docs/ablations.md).
LINEAR_BUDGET = {"epochs": 30, "val_every": 10, "batch_size": 256, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}
#: Data options that do not change the images or the splits.
DATA_IGNORED = {"name", "root", "num_workers", "download", "verify_checksums", "batch_size", "eval_batch_size"}
#: How many times :func:`compute_baseline` ran in this process (the cache is meant to make it rare).
COMPUTED = {"count": 0}


def default_cache() -> Path:
    """``$CSSL_BASELINE_CACHE``, else ``$XDG_CACHE_HOME/cssl/baselines`` (``~/.cache/cssl/baselines``)."""
    if os.environ.get("CSSL_BASELINE_CACHE"):
        return Path(os.environ["CSSL_BASELINE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cssl" / "baselines"


def baseline_spec(config: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    """What a baseline of a run (flattened config) depends on; None without a dataset name."""
    from cssl.data.datamodules import DATASETS

    name = config.get("data.name")
    if not isinstance(name, str):
        return None
    if name not in DATASETS:
        raise ConfigError(f"baselines: unknown dataset {name!r} in a run's config; pass --no-baselines")
    accepted = {  # the keyword arguments of the module and of the classes it passes **kwargs on to
        parameter
        for cls in DATASETS[name].__mro__
        if "__init__" in vars(cls)
        for parameter in inspect.signature(cls.__init__).parameters
    }
    data = {
        key[len("data.") :]: value
        for key, value in sorted(config.items())
        if key.startswith("data.") and key.count(".") == 1 and key[len("data.") :] in accepted
    }
    spec: dict[str, Any] = {
        "version": VERSION,
        "kind": kind,
        "data": name,
        "data_options": {k: v for k, v in data.items() if k not in DATA_IGNORED},
        "knn_k": int(config.get("method.knn_k", 20)),
        "knn_t": float(config.get("method.knn_t", 0.07)),
        "linear": LINEAR_BUDGET,
        "seed": int(config.get("seed", 0) or 0),
    }
    if kind == "starting_weights":
        init = config.get("backbone_init")
        if not init:
            return None
        from cssl.models.weights import check_init_path, sha256

        file = check_init_path(init)
        assert file is not None
        spec["init"], spec["init_sha256"] = str(init), sha256(file)  # cached by content, not by where it lies
    if kind in ("random_init", "starting_weights"):
        spec["backbone"] = str(config.get("backbone", "resnet18"))
        spec["cifar_stem"] = config.get("cifar_stem")
        spec["zero_init_residual"] = bool(config.get("zero_init_residual", False))
    return spec


def spec_hash(spec: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _data(spec: Mapping[str, Any], root: str | None) -> Any:
    from cssl.data.datamodules import build_datamodule

    options = dict(spec["data_options"])
    if root is not None:
        options["root"] = root
    data = build_datamodule(spec["data"], train_split="labelled", train_transform=None, **options)
    data.check()
    return data


@torch.no_grad()
def _features(encode: nn.Module, data: Any, dataset: Any) -> tuple[Tensor, Tensor]:
    """(N, F) features of a split's images through the evaluation transform (on a GPU when there is one, as
    ``linear_eval.py mode=knn``), and their (N,) labels, on the CPU."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encode = encode.to(device)
    feats, labels = [], []
    for x, y in data._loader(dataset, train=False):  # the data's own loader: batch size, collation
        feats.append(encode(data.eval_transform.to(device)(x.to(device))).float().flatten(1).cpu())  # (B, F)
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def _linear(train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], num_classes: int, seed: int) -> dict[str, float]:
    """cssl's LinearProbe on precomputed features, :data:`LINEAR_BUDGET`; last and best held-out top-1."""
    import pytorch_lightning as pl

    from cssl.eval.probe import LinearProbe, last_and_best
    from cssl.models.optim import OptimSettings

    budget = LINEAR_BUDGET
    identity = nn.Identity()
    identity.num_features = train[0].shape[1]  # type: ignore[assignment]
    pl.seed_everything(seed, verbose=False)
    optim = OptimSettings(name="sgd", lr=budget["lr"], momentum=budget["momentum"], weight_decay=budget["weight_decay"])
    probe = LinearProbe(identity, num_classes=num_classes, batch_size=budget["batch_size"], optim=optim)
    keep = train[1] >= 0
    loader = DataLoader(
        TensorDataset(train[0][keep], train[1][keep]), batch_size=budget["batch_size"], shuffle=True, drop_last=False
    )
    quiet = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # no Trainer banner in the middle of the report's output
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(eval mode|LeafSpec|num_workers|does not have many workers).*")
            trainer = pl.Trainer(
                accelerator="cpu",
                max_epochs=budget["epochs"],
                check_val_every_n_epoch=budget["val_every"],
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                num_sanity_val_steps=0,
            )
            trainer.fit(
                probe, train_dataloaders=loader, val_dataloaders=DataLoader(TensorDataset(*val), batch_size=1024)
            )
    finally:
        quiet.setLevel(level)
    result = last_and_best(probe.history)
    return {"linear_top1": float(result["top1_last"]), "linear_top1_best": float(result["top1_best"])}


def encoder_features(encode: nn.Module, data: Any) -> dict[str, Any]:
    """The features of ``encode`` on the held-out, labelled and kNN-bank images of ``data`` (a checked data
    module with its evaluation transform), each a ((N, F) features, (N,) labels) pair, and ``num_classes``."""
    held_out = _features(encode, data, data.sets["val"])
    labelled = _features(encode, data, data.sets["labelled"])
    bank = labelled if data.bank_limit is None else _features(encode, data, data.bank_dataset())
    return {"held_out": held_out, "labelled": labelled, "bank": bank, "num_classes": data.num_classes}


def baseline_features(spec: Mapping[str, Any], *, root: str | None = None) -> dict[str, Any]:
    """The features of a baseline (``random_init`` or ``raw_pixels``): see :func:`encoder_features`."""
    import pytorch_lightning as pl

    from cssl.models.backbones import build_backbone

    data = _data(spec, root)
    encode: nn.Module
    if spec["kind"] in ("random_init", "starting_weights"):
        stem = data.default_cifar_stem if spec["cifar_stem"] is None else bool(spec["cifar_stem"])
        pl.seed_everything(int(spec["seed"]), verbose=False)
        encode = build_backbone(spec["backbone"], cifar_stem=stem, zero_init_residual=bool(spec["zero_init_residual"]))
        if (
            spec["kind"] == "starting_weights"
        ):  # the weights the runs started from (backbone_init), as pretrain loads them
            from cssl.models.weights import load_init

            load_init(encode, Path(spec["init"]), name=spec["backbone"], cifar_stem=stem)
        encode.eval()
    else:
        encode = nn.Identity()
    return encoder_features(encode, data)


def knn_top1(features: Mapping[str, Any], *, k: int, temperature: float) -> float:
    """Held-out top-1 of the weighted kNN against the bank, as a run's ``val/knn_top1``."""
    from cssl.eval.knn import knn_predict

    (query, query_y), (bank, bank_y) = features["held_out"], features["bank"]
    keep = bank_y >= 0
    query = torch.nn.functional.normalize(query, dim=1)  # (Q, F) as the runs' validation: normalised features
    scores = knn_predict(query, bank[keep], bank_y[keep], features["num_classes"], k=k, temperature=temperature)
    return float((scores.argmax(1) == query_y).float().mean())


def evaluate_features(features: Mapping[str, Any], *, k: int, temperature: float, seed: int) -> dict[str, float]:
    """``knn_top1``, ``linear_top1`` and ``linear_top1_best`` of features from :func:`encoder_features`."""
    knn = knn_top1(features, k=k, temperature=temperature)
    linear = _linear(features["labelled"], features["held_out"], features["num_classes"], seed)
    return {"knn_top1": knn, **linear}


def compute_baseline(spec: Mapping[str, Any], *, root: str | None = None) -> dict[str, float]:
    """``knn_top1``, ``linear_top1`` and ``linear_top1_best`` of one baseline (see the module docstring)."""
    COMPUTED["count"] += 1
    feats = baseline_features(spec, root=root)
    return evaluate_features(feats, k=int(spec["knn_k"]), temperature=float(spec["knn_t"]), seed=int(spec["seed"]))


def baseline(spec: Mapping[str, Any], cache: Path | None, *, root: str | None = None) -> dict[str, float]:
    """The results of ``spec`` from ``cache/<hash>.json``, computed and stored there when absent."""
    path = None if cache is None else cache / f"{spec_hash(spec)}.json"
    if path is not None and path.is_file():
        try:
            stored = json.loads(path.read_text())
            if stored.get("spec") == json.loads(json.dumps(spec, default=str)):
                return {k: float(v) for k, v in stored["results"].items()}
        except (OSError, ValueError, KeyError, AttributeError):
            pass  # a damaged entry is recomputed
    results = compute_baseline(spec, root=root)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"spec": spec, "results": results}, indent=1, default=str))
            tmp.replace(path)
        except OSError as err:
            raise ConfigError(f"--baseline-cache {cache}: cannot write ({err.strerror})") from None
    return results
