"""Take the backbone out: ``python -m cssl.export ckpt=RUN_DIR_OR_CKPT format=FORMAT [out=PATH]``.

Formats (docs/export.md has each one's load line):

- ``torchvision``: a state dict (``.pth``) that ``torchvision.models.resnetXX()`` with ``fc = Identity()``
  loads strictly (ResNets with the ImageNet stem);
- ``timm``: a folder (``config.json`` + ``model.safetensors``, as timm's ``save_for_hf`` writes them) that
  ``timm.create_model("local-dir:OUT", pretrained=True)`` loads with its pretrained config (mean, std, input
  size); timm models, and the ResNets with the ImageNet stem (timm's resnet18/34/50 have the same weights);
- ``safetensors``: the backbone's weights only, with metadata (every backbone, the CIFAR stem included);
- ``detectron2``: a pickle ``{"model": {name: ndarray}, "__author__": ..., "matching_heuristics": True}`` with
  detectron2's ResNet names, the layout MoCo's detection/convert-pretrain-to-detectron2.py writes (ResNets
  with the ImageNet stem).

``out`` defaults to ``RUN_DIR/export/`` (``backbone.pth``, ``timm/``, ``backbone.safetensors``,
``backbone.pkl``). Every export is verified when written: loaded back the way a user loads it, its features on
a fixed batch must equal the backbone's (max abs difference <= 1e-5, fp32), or the files are removed and the
command fails in one line. A model card (``<file>.card.json`` and ``<file>.card.md``, e.g.
``backbone.pth.card.json``; ``card.json`` and ``README.md`` in a timm folder) goes beside the weights.
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cssl.runtime import cli
from cssl.runtime.checkpoint import run_dir_of

FORMATS = ("torchvision", "timm", "safetensors", "detectron2")
OPTIONS = {"ckpt": None, "format": None, "out": None}
TOLERANCE = 1e-5  # max abs difference of the features, fp32
BATCH = 4  # images of the fixed verification batch
RESNETS = ("resnet18", "resnet34", "resnet50")
DEFAULT_NAMES = {
    "torchvision": "backbone.pth",
    "timm": "timm",
    "safetensors": "backbone.safetensors",
    "detectron2": "backbone.pkl",
}
# MoCo's converter (facebookresearch/moco, detection/convert-pretrain-to-detectron2.py:25-33 at 7397dfe):
# no "layer" in the name -> "stem." prefix; layerN -> res(N+1); bnN -> convN.norm; downsample.0 -> shortcut;
# downsample.1 -> shortcut.norm; arrays as numpy; the pickle of lines 37-40.
D2_AUTHOR = "cssl"


class ExportError(Exception):
    """An export that was written but does not load or compute the same features: its files are removed."""


def parse_options(argv: list[str]) -> dict[str, Any]:
    """``key=value`` options (``ckpt``, ``format``, ``out``), checked."""
    from cssl.core.errors import ConfigError, check

    options: dict[str, Any] = dict(OPTIONS)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if key not in OPTIONS or not sep:
            raise ConfigError(f"unknown export option {arg!r}: use ckpt=RUN_DIR_OR_CKPT format=FORMAT [out=PATH]")
        options[key] = value or None
    check(options["ckpt"] is not None, "ckpt=PATH is required: a pretraining run dir or .ckpt file")
    check(
        options["format"] in FORMATS,
        f"format must be one of {', '.join(FORMATS)}, got {options['format']!r}",
    )
    return options


def refusal(backbone: str, cifar_stem: bool, fmt: str) -> str | None:
    """Why ``fmt`` cannot hold the backbone (and which formats can), or None when it can."""
    holders = [f for f in FORMATS if _holds(backbone, cifar_stem, f)]
    if fmt in holders:
        return None
    if backbone.startswith("timm:"):
        what = f"backbone {backbone} is a timm model, not a stock ResNet"
    elif cifar_stem:
        what = f"backbone {backbone} has the CIFAR stem (3x3 stride-1 conv1, no max-pool), which a stock {fmt} ResNet does not"
    else:
        what = f"backbone {backbone} is not one of {', '.join(RESNETS)}"
    return f"format={fmt} cannot hold it: {what}; use format={' or format='.join(holders)}"


def _holds(backbone: str, cifar_stem: bool, fmt: str) -> bool:
    if fmt == "safetensors":
        return True
    if fmt == "timm":
        return backbone.startswith("timm:") or (backbone in RESNETS and not cifar_stem)
    return backbone in RESNETS and not cifar_stem


def default_out(source: Path, fmt: str) -> Path:
    """``RUN_DIR/export/<name>`` of a checkpoint in ``RUN_DIR/checkpoints/`` (else beside the checkpoint)."""
    return run_dir_of(source) / "export" / DEFAULT_NAMES[fmt]


def backbone_state(backbone: Any) -> dict[str, Any]:
    """The backbone's tensors, on the CPU, contiguous (as every format stores them)."""
    return {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}


# -- writers: (state, meta, out) -> the weight files written ----------------------------------------------


def write_torchvision(state: dict[str, Any], meta: dict[str, Any], out: Path) -> list[Path]:
    import torch

    from cssl.core.storage import atomic_write

    atomic_write(out, lambda f: torch.save(state, f))
    return [out]


def write_safetensors(state: dict[str, Any], meta: dict[str, Any], out: Path) -> list[Path]:
    from safetensors.torch import save

    from cssl.core.storage import atomic_write

    data = save(state, metadata=safetensors_metadata(meta))
    atomic_write(out, lambda f: f.write(data), needed=len(data))
    return [out]


def safetensors_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """What a safetensors file says of itself (strings only)."""
    import cssl

    pre = preprocessing(meta)
    return {
        "format": "pt",
        "backbone": str(meta["backbone"]),
        "cifar_stem": str(bool(meta.get("cifar_stem"))).lower(),
        "method": str(meta.get("method")),
        "mean": json.dumps(pre["mean"]),
        "std": json.dumps(pre["std"]),
        "input_size": json.dumps(pre["input_size"]),
        "cssl_version": cssl.__version__,
    }


def timm_model(meta: dict[str, Any], *, pretrained_file: str | None = None) -> Any:
    """The timm model (no classifier) that holds the backbone of ``meta``."""
    import timm

    name = str(meta["backbone"]).removeprefix("timm:")
    if pretrained_file is None:
        return timm.create_model(name, pretrained=False, num_classes=0)
    return timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": pretrained_file})


def write_timm(state: dict[str, Any], meta: dict[str, Any], out: Path) -> list[Path]:
    """``out/config.json`` (timm's own ``save_config_for_hf``, the pretraining preprocessing as its
    ``data_config``; no source, tag, licence or paper of the architecture's registered weights) and
    ``out/model.safetensors``."""
    import tempfile

    from safetensors.torch import save
    from timm.models._hub import save_config_for_hf

    from cssl.core.storage import atomic_write, atomic_write_text

    model = timm_model(meta)
    model.load_state_dict(state, strict=True)
    pre = preprocessing(meta)
    data_config = {
        "input_size": tuple(pre["input_size"]),
        "mean": tuple(pre["mean"]),
        "std": tuple(pre["std"]),
        "crop_pct": pre["crop_pct"],
        "interpolation": pre["interpolation"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        save_config_for_hf(model, str(Path(tmp) / "config.json"), data_config=data_config)
        config = json.loads((Path(tmp) / "config.json").read_text())
    pretrained = config.setdefault("pretrained_cfg", {})
    for key in ("tag", "license", "origin_url", "paper_ids", "paper_name", "notes", "hf_hub_id", "url"):
        pretrained.pop(key, None)
    pretrained["description"] = f"cssl {meta.get('method')} pretraining on {meta.get('data')}"
    weights = out / "model.safetensors"
    data = save(state, metadata=safetensors_metadata(meta))
    atomic_write(weights, lambda f: f.write(data), needed=len(data))
    atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    return [weights, out / "config.json"]


def detectron2_name(name: str) -> str:
    """A torchvision ResNet parameter name as detectron2 calls it (the rules of MoCo's converter)."""
    if "layer" not in name:
        name = "stem." + name
    for t in (1, 2, 3, 4):
        name = name.replace(f"layer{t}", f"res{t + 1}")
    for t in (1, 2, 3):
        name = name.replace(f"bn{t}", f"conv{t}.norm")
    return name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def torchvision_name(name: str) -> str:
    """The inverse of :func:`detectron2_name`."""
    name = name.removeprefix("stem.")
    name = name.replace("shortcut.norm", "downsample.1").replace("shortcut", "downsample.0")
    for t in (1, 2, 3):
        name = name.replace(f"conv{t}.norm", f"bn{t}")
    for t in (1, 2, 3, 4):
        name = name.replace(f"res{t + 1}", f"layer{t}")
    return name


def write_detectron2(state: dict[str, Any], meta: dict[str, Any], out: Path) -> list[Path]:
    from cssl.core.storage import atomic_write

    model = {detectron2_name(k): v.numpy() for k, v in state.items()}
    payload = {"model": model, "__author__": D2_AUTHOR, "matching_heuristics": True}
    atomic_write(out, lambda f: pickle.dump(payload, f))
    return [out]


WRITERS: dict[str, Callable[[dict[str, Any], dict[str, Any], Path], list[Path]]] = {
    "torchvision": write_torchvision,
    "timm": write_timm,
    "safetensors": write_safetensors,
    "detectron2": write_detectron2,
}


# -- verification: load it back as a user would, compare features -----------------------------------------


def fixed_batch(meta: dict[str, Any]) -> Any:
    """(BATCH, 3, S, S) fp32 images, the same for every run (S: the pretraining image size)."""
    import torch

    size = int(meta.get("image_size") or 64)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(BATCH, 3, size, size, generator=generator)


def load_back(fmt: str, out: Path, meta: dict[str, Any]) -> tuple[Any, str]:
    """The module a user gets from ``out`` (and how it was loaded, in words)."""
    import torch
    import torchvision

    name = str(meta["backbone"])
    if fmt == "torchvision":
        model = getattr(torchvision.models, name)(weights=None)
        model.fc = torch.nn.Identity()
        model.load_state_dict(torch.load(out, map_location="cpu", weights_only=True), strict=True)
        return model, f"torchvision.models.{name}() with fc = Identity(), load_state_dict(strict=True)"
    if fmt == "timm":
        import timm

        model = timm.create_model(f"local-dir:{out}", pretrained=True)
        overlay = timm_model(meta, pretrained_file=str(out / "model.safetensors"))
        _check_timm_config(model, meta)
        return (model, overlay), "timm.create_model('local-dir:OUT', pretrained=True) and pretrained_cfg_overlay"
    if fmt == "safetensors":
        from safetensors.torch import load_file

        from cssl.models.backbones import build_backbone

        model = build_backbone(name, cifar_stem=bool(meta.get("cifar_stem")))
        model.load_state_dict(load_file(str(out)), strict=True)
        return model, f"safetensors.torch.load_file into build_backbone({name!r}), load_state_dict(strict=True)"
    # detectron2 is not installed: the names mapped back to torchvision's, the tensors into its ResNet
    with open(out, "rb") as f:
        payload = pickle.load(f)  # the file this process has just written
    if set(payload) != {"model", "__author__", "matching_heuristics"} or not payload["matching_heuristics"]:
        raise ExportError(f"{out}: not the layout of MoCo's converter (keys {sorted(payload)})")
    model = getattr(torchvision.models, name)(weights=None)
    model.fc = torch.nn.Identity()
    state = {torchvision_name(k): torch.from_numpy(v) for k, v in payload["model"].items()}
    model.load_state_dict(state, strict=True)
    return model, f"names mapped back to torchvision.models.{name}() (detectron2 itself is not installed)"


def _check_timm_config(model: Any, meta: dict[str, Any]) -> None:
    pre = preprocessing(meta)
    cfg = model.pretrained_cfg
    got = {
        "input_size": list(cfg.get("input_size", ())),
        "mean": [round(float(v), 6) for v in cfg.get("mean", ())],
        "std": [round(float(v), 6) for v in cfg.get("std", ())],
        "num_classes": model.num_classes,
    }
    want = {
        "input_size": pre["input_size"],
        "mean": [round(v, 6) for v in pre["mean"]],
        "std": [round(v, 6) for v in pre["std"]],
        "num_classes": 0,
    }
    if got != want:
        raise ExportError(f"timm's pretrained config {got} differs from the pretraining's {want}")


def verify(fmt: str, out: Path, backbone: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """Load ``out`` back and compare its features on :func:`fixed_batch` with ``backbone``'s.

    Raises:
        ExportError: it does not load, or a feature differs by more than :data:`TOLERANCE`.
    """
    import torch

    try:
        loaded, how = load_back(fmt, out, meta)
    except ExportError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever the target's loader says, in one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ExportError(f"{out} does not load back ({type(err).__name__}: {first[:300]})") from None
    batch = fixed_batch(meta)
    backbone = backbone.float().eval()
    with torch.no_grad():
        want = backbone(batch)
        diffs = []
        for model in loaded if isinstance(loaded, tuple) else (loaded,):
            got = model.float().eval()(batch)
            if got.shape != want.shape:
                raise ExportError(f"{out}: features of shape {tuple(got.shape)}, the backbone's {tuple(want.shape)}")
            diffs.append(float((got - want).abs().max()))
    diff = max(diffs)
    if not diff <= TOLERANCE:
        raise ExportError(f"{out}: features differ from the backbone's by {diff:.3g} (> {TOLERANCE:g})")
    return {"max_abs_diff": diff, "tolerance": TOLERANCE, "batch": list(batch.shape), "loaded_with": how}


# -- the model card --------------------------------------------------------------------------------------


def preprocessing(meta: dict[str, Any]) -> dict[str, Any]:
    """Input size, mean/std, crop fraction and interpolation of the pretraining data."""
    data = (meta.get("config") or {}).get("data") or {}
    size = int(data.get("eval_image_size") or meta.get("image_size") or data.get("image_size") or 224)
    load = data.get("load_size")
    return {
        "input_size": [3, size, size],
        "mean": [float(v) for v in data.get("mean", (0.485, 0.456, 0.406))],
        "std": [float(v) for v in data.get("std", (0.229, 0.224, 0.225))],
        "crop_pct": round(size / int(load), 4) if load else (0.875 if data.get("name") == "imagefolder" else 1.0),
        "interpolation": "bilinear",
        "channel_order": "RGB",
        "pixel_scale": "values in [0, 1], then (x - mean) / std",
    }


def linear_results(run_dir: Path) -> list[dict[str, Any]]:
    """The linear (and kNN) evaluations found under ``run_dir`` whose checkpoint lies in it (joined as
    :mod:`cssl.report` joins them)."""
    from cssl.core.errors import ConfigError
    from cssl.report.load import find_run_dirs, read_run, same_dir

    found = []
    try:
        folders = find_run_dirs([run_dir])
    except ConfigError:
        return []
    for folder in folders:
        try:
            run = read_run(folder)
        except ConfigError:
            continue
        owner = run_dir_of(str(run.summary.get("checkpoint", "")))
        if run.is_linear_eval and same_dir(owner, str(run_dir)):
            keep = ("mode", "protocol", "top1", "top5", "top1_best", "epochs", "data", "checkpoint")
            found.append({"run_dir": str(folder), **{k: run.summary.get(k) for k in keep if k in run.summary}})
    return found


def model_card(
    meta: dict[str, Any], source: Path, fmt: str, files: list[Path], verified: dict[str, Any]
) -> dict[str, Any]:
    """The card's fields (JSON)."""
    import cssl
    from cssl.models.weights import sha256

    run_dir = run_dir_of(source)
    summary: dict[str, Any] = {}
    if (run_dir / "summary.json").is_file():
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
    config = meta.get("config") or {}
    name = str(meta["backbone"])
    stem = None if name.startswith("timm:") else ("cifar" if meta.get("cifar_stem") else "imagenet")
    metric_keys = ("knn_top1", "online_top1", "train_loss", "train_online_top1")
    return {
        "format": fmt,
        "files": [str(p) for p in files],
        "load": LOAD_LINES[fmt].format(out=files[0].parent if fmt == "timm" else files[0], **_names(meta)),
        "backbone": name,
        "stem": stem,
        "num_features": meta.get("num_features"),
        **preprocessing(meta),
        "method": meta.get("method"),
        "estimator": summary.get("estimator", (config.get("method") or {}).get("estimator")),
        "experiment": meta.get("experiment"),
        "dataset": meta.get("data"),
        "epochs": summary.get("epochs"),
        "global_step": summary.get("global_step"),
        "seed": config.get("seed"),
        "backbone_init": (meta.get("backbone_init") or {}).get("path"),
        "metrics": {k: summary[k] for k in metric_keys if summary.get(k) is not None},
        "linear_eval": linear_results(run_dir),
        "cssl_version": cssl.__version__,
        "source_checkpoint": str(source),
        "source_sha256": sha256(source),
        "verified": verified,
        **({"detectron2": detectron2_config(meta)} if fmt == "detectron2" else {}),
        "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _names(meta: dict[str, Any]) -> dict[str, str]:
    name = str(meta["backbone"])
    return {"arch": name.removeprefix("timm:"), "resnet": name, "cifar": str(bool(meta.get("cifar_stem")))}


LOAD_LINES = {
    "torchvision": "m = torchvision.models.{resnet}(); m.fc = torch.nn.Identity(); "
    "m.load_state_dict(torch.load('{out}', weights_only=True))",
    "timm": "m = timm.create_model('local-dir:{out}', pretrained=True)",
    "safetensors": "m = cssl.models.backbones.build_backbone('{resnet}', cifar_stem={cifar}); "
    "m.load_state_dict(safetensors.torch.load_file('{out}'))",
    "detectron2": "MODEL.WEIGHTS {out} (detectron2 config; with the keys of the card's detectron2 entry)",
}


def detectron2_config(meta: dict[str, Any]) -> dict[str, Any]:
    """The detectron2 config keys these weights need: torchvision's ResNet strides in the 3x3 conv, takes RGB
    and the pretraining's normalisation in 0-255 units (as MoCo's detection/configs/pascal_voc_R_50_C4_24k_moco.yaml
    sets them for its converted weights)."""
    pre = preprocessing(meta)
    depth = int(str(meta["backbone"]).removeprefix("resnet"))
    keys: dict[str, Any] = {
        "MODEL.RESNETS.DEPTH": depth,
        "MODEL.RESNETS.STRIDE_IN_1X1": False,
        "INPUT.FORMAT": "RGB",
        "MODEL.PIXEL_MEAN": [round(v * 255, 3) for v in pre["mean"]],
        "MODEL.PIXEL_STD": [round(v * 255, 3) for v in pre["std"]],
    }
    if depth in (18, 34):
        keys["MODEL.RESNETS.RES2_OUT_CHANNELS"] = 64
    return keys


def card_markdown(card: dict[str, Any]) -> str:
    """A short human-readable card."""

    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [
        f"# {card['backbone']} pretrained with {card['method']} on {card['dataset']}",
        "",
        f"Exported by cssl {card['cssl_version']} as `{card['format']}`; load with:",
        "",
        "```python",
        card["load"],
        "```",
        "",
        "| field | value |",
        "|---|---|",
    ]
    rows = [
        ("backbone", card["backbone"]),
        ("stem", card["stem"] or "timm model"),
        ("features", card["num_features"]),
        ("input size", "x".join(map(str, card["input_size"]))),
        ("mean / std", f"{card['mean']} / {card['std']}"),
        ("channel order", f"{card['channel_order']} ({card['pixel_scale']})"),
        ("method / estimator", f"{card['method']} / {card['estimator']}"),
        ("experiment", card["experiment"] or "none (command-line configuration)"),
        ("dataset", card["dataset"]),
        ("epochs / steps", f"{card['epochs']} / {card['global_step']}"),
        ("starting weights", card["backbone_init"] or "random initialisation"),
    ]
    rows += [(k, fmt(v)) for k, v in card["metrics"].items()]
    for ev in card["linear_eval"]:
        label = f"{ev.get('mode', 'linear')} {ev.get('protocol') or ''}".strip()
        rows.append((f"{label} top-1 ({ev.get('data')})", fmt(ev.get("top1"))))
    rows += [
        ("source checkpoint", f"`{card['source_checkpoint']}`"),
        ("source SHA-256", f"`{card['source_sha256']}`"),
        (
            "verified",
            f"features on a fixed {card['verified']['batch']} batch within {card['verified']['max_abs_diff']:.2g} "
            f"(tolerance {card['verified']['tolerance']:g}); {card['verified']['loaded_with']}",
        ),
    ]
    lines += [f"| {k} | {v} |" for k, v in rows]
    if card["format"] == "detectron2":
        keys = ", ".join(f"`{k} {v}`" for k, v in card["detectron2"].items())
        lines += ["", f"detectron2 config with these weights: {keys}"]
    return "\n".join(lines) + "\n"


def card_paths(fmt: str, out: Path) -> tuple[Path, Path]:
    if fmt == "timm":
        return out / "card.json", out / "README.md"
    return out.with_name(f"{out.name}.card.json"), out.with_name(f"{out.name}.card.md")


# -- the export ------------------------------------------------------------------------------------------


@dataclass
class Exported:
    format: str
    files: list[Path]  # weights, then the card (JSON, markdown)
    card: dict[str, Any]


def export_backbone(backbone: Any, meta: dict[str, Any], source: Path, fmt: str, out: Path) -> Exported:
    """Write ``backbone`` in ``fmt`` to ``out``, verify it, write its model card.

    Raises:
        ConfigError: the format cannot hold the backbone, or ``out`` cannot be written.
        ExportError: the written files do not load back or compute other features (they are removed).
    """
    from cssl.core.errors import ConfigError
    from cssl.core.storage import atomic_write_text, check_writable

    reason = refusal(str(meta["backbone"]), bool(meta.get("cifar_stem")), fmt)
    if reason is not None:
        raise ConfigError(reason)
    if fmt == "timm" and out.exists() and not out.is_dir():
        raise ConfigError(f"out={out}: format=timm writes a folder, and this is a file")
    if fmt != "timm" and out.is_dir():
        raise ConfigError(f"out={out} is a folder; format={fmt} writes a file (e.g. out={out / DEFAULT_NAMES[fmt]})")
    check_writable(out if fmt == "timm" else out.parent, key="out")
    state = backbone_state(backbone)
    files: list[Path] = []
    try:
        files = WRITERS[fmt](state, meta, out)
        verified = verify(fmt, out, backbone, meta)
    except ExportError:
        _remove(files, out if fmt == "timm" else None)
        raise
    card = model_card(meta, source, fmt, files, verified)
    card_json, card_md = card_paths(fmt, out)
    atomic_write_text(card_json, json.dumps(card, indent=2) + "\n")
    atomic_write_text(card_md, card_markdown(card))
    return Exported(fmt, [*files, card_json, card_md], card)


def _remove(files: list[Path], folder: Path | None) -> None:
    for path in files:
        path.unlink(missing_ok=True)
    if folder is not None:
        try:
            folder.rmdir()  # only when empty: nothing of the user's is removed
        except OSError:
            pass


def export(ckpt: Path, fmt: str, out: Path | None = None) -> Exported:
    """Export the backbone of a checkpoint (or run dir) to ``out`` (default :func:`default_out`)."""
    from cssl.core.errors import RunError
    from cssl.evaluate import load_backbone

    backbone, meta, source = load_backbone(Path(ckpt))
    target = Path(out) if out is not None else default_out(source, fmt)
    try:
        return export_backbone(backbone, meta, source, fmt, target)
    except ExportError as err:
        raise RunError(f"export failed verification, nothing kept: {err}") from None


def main(argv: list[str] | None = None) -> Exported | None:
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        return None

    def run() -> Exported:
        options = parse_options(argv)
        done = export(Path(options["ckpt"]), options["format"], Path(options["out"]) if options["out"] else None)
        print(
            f"wrote {done.card['files'][0] if done.format != 'timm' else Path(done.card['files'][0]).parent} "
            f"({done.format}; verified: features within {done.card['verified']['max_abs_diff']:.2g} of the "
            f"backbone's) and its model card {done.files[-2].name}, {done.files[-1].name}\n"
            f"load: {done.card['load']}"
        )
        return done

    return cli.guard(run)


if __name__ == "__main__":
    main()
