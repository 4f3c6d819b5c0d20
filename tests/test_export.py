"""Taking the backbone out (python -m cssl.export), starting from weights (backbone_init=PATH) and the backbone
as a W&B artifact (logger.log_model): every format loads back into its target and computes the same features,
the refusals are one line, the model card holds what it promises."""

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from cssl import export as ex
from cssl.core.errors import ConfigError, RunError
from cssl.models.backbones import build_backbone
from cssl.models.weights import load_init, read_state_dict
from tests.conftest import QUICK, check_ok, cli_env, compose, run_cli, run_inprocess, train_inprocess

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def meta_for(name: str, cifar_stem: bool, size: int = 32) -> dict:
    """The checkpoint meta pretraining writes (the fields export reads)."""
    return {
        "backbone": name,
        "cifar_stem": cifar_stem,
        "num_features": build_backbone(name, cifar_stem=cifar_stem).num_features,
        "image_size": size,
        "data": "cifar10",
        "method": "simclr",
        "config": {"data": {"name": "cifar10", "mean": MEAN, "std": STD}, "seed": 0, "method": {"estimator": "dcl"}},
    }


def trained_like(name: str, cifar_stem: bool, size: int = 32) -> nn.Module:
    """A backbone whose BN statistics are not the identity (so a lost buffer changes the features)."""
    torch.manual_seed(0)
    net = build_backbone(name, cifar_stem=cifar_stem)
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(4, 3, size, size) * 2 + 0.3)
    return net.eval()


def source_file(tmp_path: Path) -> Path:
    source = tmp_path / "run" / "checkpoints" / "last.ckpt"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"a stand-in checkpoint")
    return source


def features(net: nn.Module, size: int = 32) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1)))


CASES = [("resnet18", False), ("resnet18", True), ("timm:test_resnet", False)]
HOLDERS = {  # which formats can hold which backbone
    ("resnet18", False): {"torchvision", "timm", "safetensors", "detectron2"},
    ("resnet18", True): {"safetensors"},  # the CIFAR stem is no stock ResNet
    ("timm:test_resnet", False): {"timm", "safetensors"},
}


@pytest.mark.parametrize("name,cifar_stem", CASES)
def test_a_format_that_cannot_hold_the_backbone_is_refused_in_one_line(name, cifar_stem, tmp_path):
    net, meta = build_backbone(name, cifar_stem=cifar_stem), meta_for(name, cifar_stem)
    source = source_file(tmp_path)
    for fmt in sorted(set(ex.FORMATS) - HOLDERS[name, cifar_stem]):
        out = tmp_path / "out" / ex.DEFAULT_NAMES[fmt]
        with pytest.raises(ConfigError) as err:
            ex.export_backbone(net, meta, source, fmt, out)
        message = str(err.value)
        assert "\n" not in message and f"format={fmt} cannot hold it" in message and "format=safetensors" in message
        assert ("CIFAR stem" in message) == cifar_stem and not out.exists()
        for holder in HOLDERS[name, cifar_stem]:
            assert f"format={holder}" in message
    assert all(ex.refusal(name, cifar_stem, fmt) is None for fmt in HOLDERS[name, cifar_stem])


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,cifar_stem,fmt", [(name, stem, fmt) for name, stem in CASES for fmt in sorted(HOLDERS[name, stem])]
)
def test_every_format_that_holds_the_backbone_loads_back_as_a_user_loads_it(name, cifar_stem, fmt, tmp_path):
    net, meta = trained_like(name, cifar_stem), meta_for(name, cifar_stem)
    source = source_file(tmp_path)
    out = tmp_path / "out" / ex.DEFAULT_NAMES[fmt]
    done = ex.export_backbone(net, meta, source, fmt, out)
    want = features(net)
    # the user's own load line, written out here independently of cssl.export
    if fmt == "torchvision":
        user = getattr(torchvision.models, name)()
        user.fc = nn.Identity()
        user.load_state_dict(torch.load(out, weights_only=True))
    elif fmt == "timm":
        import timm

        user = timm.create_model(f"local-dir:{out}", pretrained=True)
        assert list(user.pretrained_cfg["mean"]) == pytest.approx(MEAN)
        assert list(user.pretrained_cfg["std"]) == pytest.approx(STD)
        assert tuple(user.pretrained_cfg["input_size"]) == (3, 32, 32) and user.num_classes == 0
        arch = name.removeprefix("timm:")
        other = timm.create_model(
            arch, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"))
        )
        assert torch.allclose(features(other), want, atol=1e-5, rtol=0)
    elif fmt == "safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        user = build_backbone(name, cifar_stem=cifar_stem)
        user.load_state_dict(load_file(str(out)))
        with safe_open(str(out), "pt") as f:
            saved = f.metadata()
        assert saved["backbone"] == name and saved["cifar_stem"] == str(cifar_stem).lower()
        assert json.loads(saved["mean"]) == MEAN
    else:  # detectron2 is not installed: its names, back to torchvision's by the converter's rules reversed
        with open(out, "rb") as f:
            payload = pickle.load(f)
        assert payload["matching_heuristics"] is True and set(payload) == {"model", "__author__", "matching_heuristics"}
        user = getattr(torchvision.models, name)()
        user.fc = nn.Identity()
        user.load_state_dict({_d2_to_tv(k): torch.from_numpy(v) for k, v in payload["model"].items()})
    assert torch.allclose(features(user), want, atol=1e-5, rtol=0)
    card = json.loads(done.files[-2].read_text())
    assert done.card == card and done.files[-1].read_text().startswith(f"# {name} pretrained with simclr")
    assert card["verified"]["max_abs_diff"] <= 1e-5 and card["format"] == fmt


def _d2_to_tv(name: str) -> str:
    """detectron2 -> torchvision names, written independently of cssl.export.torchvision_name."""
    parts = name.split(".")
    if parts[0] == "stem":
        parts = parts[1:]
    out, i = [], 0
    while i < len(parts):
        p = parts[i]
        if p.startswith("res") and p[3:].isdigit():
            out.append(f"layer{int(p[3:]) - 1}")
        elif p == "shortcut" and i + 1 < len(parts) and parts[i + 1] == "norm":
            out.append("downsample.1")
            i += 1
        elif p == "shortcut":
            out.append("downsample.0")
        elif p.startswith("conv") and i + 1 < len(parts) and parts[i + 1] == "norm":
            out.append(f"bn{p[4:]}")
            i += 1
        else:
            out.append(p)
        i += 1
    return ".".join(out)


def expected_detectron2_resnet50() -> set[str]:
    """detectron2's ResNet-50 names (detectron2/modeling/backbone/resnet.py: stem.conv1 with its norm,
    res2..res5 of 3, 4, 6, 3 bottleneck blocks conv1..conv3, a shortcut conv + norm in each stage's first
    block), with BN's buffers, as MoCo's converter writes them."""
    norm = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    names = {"stem.conv1.weight", *(f"stem.conv1.norm.{n}" for n in norm)}
    for stage, blocks in zip(range(2, 6), (3, 4, 6, 3), strict=True):
        for b in range(blocks):
            for c in (1, 2, 3):
                names.add(f"res{stage}.{b}.conv{c}.weight")
                names.update(f"res{stage}.{b}.conv{c}.norm.{n}" for n in norm)
            if b == 0:
                names.add(f"res{stage}.0.shortcut.weight")
                names.update(f"res{stage}.0.shortcut.norm.{n}" for n in norm)
    return names


def test_detectron2_names_of_resnet50_are_the_official_mapping(tmp_path):
    net = build_backbone("resnet50")
    out = tmp_path / "r50.pkl"
    ex.write_detectron2(ex.backbone_state(net), meta_for("resnet50", False), out)
    with open(out, "rb") as f:
        model = pickle.load(f)["model"]
    assert set(model) == expected_detectron2_resnet50()
    assert model["res5.0.shortcut.weight"].shape == (2048, 1024, 1, 1)
    assert model["stem.conv1.weight"].shape == (64, 3, 7, 7)
    assert all(ex.torchvision_name(ex.detectron2_name(k)) == k for k in net.state_dict())


@pytest.mark.slow
def test_resnet50_round_trip_in_every_format(tmp_path):
    net, meta = trained_like("resnet50", False), meta_for("resnet50", False)
    source = source_file(tmp_path)
    for fmt in ex.FORMATS:
        done = ex.export_backbone(net, meta, source, fmt, tmp_path / "out" / ex.DEFAULT_NAMES[fmt])
        assert done.card["verified"]["max_abs_diff"] <= 1e-5
    assert (
        json.loads((tmp_path / "out" / "backbone.pkl.card.json").read_text())["detectron2"]["MODEL.RESNETS.DEPTH"] == 50
    )


def test_a_failed_verification_removes_the_files_and_is_one_line(tmp_path, monkeypatch):
    net, meta = trained_like("resnet18", False), meta_for("resnet18", False)
    source = source_file(tmp_path)
    original = ex.WRITERS["torchvision"]

    def corrupting(state, meta, out):  # a converter bug: one weight changed on the way
        state = dict(state)
        state["layer4.1.conv2.weight"] = state["layer4.1.conv2.weight"] * 1.01
        return original(state, meta, out)

    monkeypatch.setitem(ex.WRITERS, "torchvision", corrupting)
    out = tmp_path / "out" / "backbone.pth"
    with pytest.raises(ex.ExportError) as err:
        ex.export_backbone(net, meta, source, "torchvision", out)
    assert "features differ from the backbone's" in str(err.value) and "\n" not in str(err.value)
    assert not out.exists() and not list(out.parent.iterdir())

    def renaming(state, meta, out):  # a name lost: the target refuses it
        state = {k.replace("bn1", "norm1"): v for k, v in state.items()}
        return original(state, meta, out)

    monkeypatch.setitem(ex.WRITERS, "torchvision", renaming)
    with pytest.raises(ex.ExportError, match="does not load back"):
        ex.export_backbone(net, meta, source, "torchvision", out)
    assert not out.exists()


def test_bad_options_are_one_line():
    for argv, words in [
        ([], "ckpt=PATH is required"),
        (["ckpt=x", "format=onnx"], "format must be one of"),
        (["ckpt=x", "format=timm", "bogus=1"], "unknown export option"),
    ]:
        with pytest.raises(ConfigError, match=words):
            ex.parse_options(argv)


# -- backbone_init ----------------------------------------------------------------------------------------


def test_backbone_init_loads_torchvision_timm_and_exports_strictly(tmp_path):
    tv = torchvision.models.resnet18()  # a full torchvision state dict, classifier included
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    net = build_backbone("resnet18")
    record = load_init(net, tmp_path / "tv.pth", name="resnet18", cifar_stem=False)
    assert record["dropped"] == ["fc.bias", "fc.weight"]
    assert record["sha256"] == hashlib.sha256((tmp_path / "tv.pth").read_bytes()).hexdigest()
    tv.fc = nn.Identity()
    assert torch.equal(features(net), features(tv))
    # a cssl export folder (timm) and a safetensors file load the same way
    source = source_file(tmp_path)
    other = trained_like("timm:test_resnet", False)
    ex.export_backbone(other, meta_for("timm:test_resnet", False), source, "timm", tmp_path / "timm")
    fresh = build_backbone("timm:test_resnet")
    load_init(fresh, tmp_path / "timm", name="timm:test_resnet", cifar_stem=False)
    assert torch.equal(features(fresh), features(other))
    ex.export_backbone(other, meta_for("timm:test_resnet", False), source, "safetensors", tmp_path / "b.safetensors")
    assert read_state_dict(tmp_path / "b.safetensors").keys() == other.state_dict().keys()


def test_backbone_init_errors_are_one_line_and_name_the_mismatch(tmp_path):
    torch.save(build_backbone("resnet18").state_dict(), tmp_path / "r18.pth")
    torch.save(build_backbone("resnet18", cifar_stem=True).state_dict(), tmp_path / "r18c.pth")
    (tmp_path / "junk.pth").write_bytes(b"not weights")
    cases = [
        (tmp_path / "nope.pth", "resnet18", False, "no such file"),
        (tmp_path / "r18.pth", "resnet34", False, "missing layer1.2.conv1.weight"),
        (
            tmp_path / "r18.pth",
            "resnet18",
            True,
            "ImageNet stem (7x7 conv1), this run's resnet18 does not; pass cifar_stem=false",
        ),
        (
            tmp_path / "r18c.pth",
            "resnet18",
            False,
            "CIFAR stem (3x3 conv1), this run's resnet18 does not; pass cifar_stem=true",
        ),
        (tmp_path / "r18.pth", "timm:test_resnet", False, "does not fit backbone=timm:test_resnet"),
        (tmp_path / "junk.pth", "resnet18", False, "unreadable"),
        (tmp_path, "resnet18", False, "the folder holds none of"),
    ]
    for path, name, stem, words in cases:
        with pytest.raises(ConfigError) as err:
            load_init(build_backbone(name, cifar_stem=stem), path, name=name, cifar_stem=stem)
        assert words in str(err.value) and "\n" not in str(err.value), (path, name, str(err.value))


def test_backbone_init_missing_file_fails_before_any_work(tmp_path):
    code, err = run_inprocess("train", [*QUICK, f"backbone_init={tmp_path / 'nope.pth'}", f"run_dir={tmp_path / 'r'}"])
    assert (
        code == 2
        and err.strip()
        == f"error: backbone_init={tmp_path / 'nope.pth'}: no such file; pass a state dict (.pth/.pt/.safetensors) or an export folder"
    )
    assert compose("train", []).backbone_init is None


def test_log_model_needs_the_wandb_logger(tmp_path):
    code, err = run_inprocess("train", [*QUICK, "logger=csv", "logger.log_model=true", f"run_dir={tmp_path}"])
    assert code == 2 and "logger.log_model=true logs a W&B artifact and needs logger=wandb" in err
    assert compose("train", []).logger.log_model is False


# -- end to end on a tiny pretraining run -------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    run = tmp_path_factory.mktemp("pretrain")
    train_inprocess(*QUICK, "backbone=resnet18", "trainer.max_steps=1", f"run_dir={run}")
    return run


@pytest.mark.slow
def test_the_command_line_exports_with_a_model_card(pretrained, tmp_path, capsys):
    linear = pretrained / "linear"  # a linear evaluation written into the run dir (as run_dir=RUN/linear does)
    linear.mkdir(exist_ok=True)
    summary = {"mode": "linear", "protocol": "default", "top1": 0.5, "top5": 0.9, "data": "digits"}
    summary["checkpoint"] = str(pretrained / "checkpoints" / "last.ckpt")
    (linear / "summary.json").write_text(json.dumps(summary))
    done = ex.main([f"ckpt={pretrained}", "format=torchvision"])
    out = pretrained / "export" / "backbone.pth"
    assert done.files[0] == out and f"wrote {out}" in capsys.readouterr().out
    card = json.loads((pretrained / "export" / "backbone.pth.card.json").read_text())
    run_summary = json.loads((pretrained / "summary.json").read_text())
    source = Path(card["source_checkpoint"])
    assert card["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert (card["backbone"], card["stem"], card["method"], card["estimator"], card["dataset"]) == (
        "resnet18",
        "imagenet",
        "simclr",
        "infonce",
        "digits",
    )
    assert card["input_size"] == [3, 32, 32] and card["mean"] == [0.5, 0.5, 0.5] and card["channel_order"] == "RGB"
    assert card["epochs"] == run_summary["epochs"] and card["metrics"]["knn_top1"] == run_summary["knn_top1"]
    assert card["linear_eval"] == [{"run_dir": str(linear), **summary}]
    assert card["cssl_version"] and card["experiment"] is None and card["backbone_init"] is None
    md = (pretrained / "export" / "backbone.pth.card.md").read_text()
    assert "linear default top-1 (digits) | 0.5000" in md and card["source_sha256"] in md
    with pytest.raises(SystemExit) as stop:  # the refusal, in one line, on the command line
        ex.main([f"ckpt={pretrained}", "format=onnx"])
    assert stop.value.code == 2


@pytest.mark.slow
def test_a_failed_export_from_the_command_line_is_one_line(pretrained, tmp_path, monkeypatch):
    monkeypatch.setitem(ex.WRITERS, "safetensors", lambda state, meta, out: ex.write_torchvision(state, meta, out))
    with pytest.raises(RunError, match="export failed verification, nothing kept"):
        ex.export(pretrained, "safetensors", tmp_path / "b.safetensors")
    assert not (tmp_path / "b.safetensors").exists()


@pytest.mark.slow
def test_pretraining_starts_from_exported_weights(pretrained, tmp_path):
    ex.export(pretrained, "torchvision", tmp_path / "start.pth")
    run = tmp_path / "run"
    # another seed (another random init) and a tiny rate: the checkpoint shows what was loaded
    overrides = ("backbone=resnet18", "seed=1", "trainer.max_steps=1", "optimizer.lr=1e-9")
    train_inprocess(*QUICK, *overrides, f"backbone_init={tmp_path / 'start.pth'}", f"run_dir={run}")
    start = torch.load(tmp_path / "start.pth", weights_only=True)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    for key in ("conv1.weight", "layer3.1.conv2.weight", "layer4.0.downsample.0.weight"):
        assert torch.allclose(ckpt["state_dict"][f"backbone.{key}"], start[key], atol=1e-6, rtol=0), key
    torch.manual_seed(1)
    assert not torch.allclose(build_backbone("resnet18").conv1.weight, start["conv1.weight"], atol=1e-3)
    assert ckpt["cssl"]["backbone_init"]["path"] == str(tmp_path / "start.pth")
    assert json.loads((run / "summary.json").read_text())["backbone_init"] == str(tmp_path / "start.pth")


@pytest.mark.slow
def test_log_model_records_the_backbone_artifact_offline(tmp_path):
    run = tmp_path / "run"
    env = cli_env(HOME=str(tmp_path), WANDB_MODE="offline")
    proc = run_cli(
        "train.py",
        *QUICK[1:],
        "logger=wandb",
        "logger.log_model=true",
        "trainer.max_steps=1",
        f"run_dir={run}",
        env=env,
    )
    check_ok(proc)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["logged_model"] == f"backbone-{run.name}:latest"
    names = ["backbone.safetensors", "backbone.safetensors.card.json", "backbone.safetensors.card.md"]
    assert sorted(p.name for p in (run / "export").iterdir()) == names
    (offline,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    # the offline run's record log (protobuf records; wandb 0.31 has no Python reader) holds the artifact's
    # name, type, files and the card's fields as its metadata
    data = offline.read_bytes()
    for word in (f"backbone-{run.name}", *names, "source_sha256"):
        assert word.encode() in data, word


@pytest.mark.slow
def test_a_log_model_failure_does_not_stop_training(tmp_path, monkeypatch):
    from cssl.runtime import loggers

    def broken(*args, **kwargs):
        raise RuntimeError("artifact storage unavailable")

    monkeypatch.setattr(loggers, "log_artifact", broken)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HOME", str(tmp_path))
    code, err = run_inprocess(
        "train",
        [*QUICK[1:], "logger=wandb", "logger.log_model=true", "trainer.max_steps=1", f"run_dir={tmp_path / 'r'}"],
    )
    assert code == 0, err[-2000:]
    assert (
        "warning: backbone artifact (logger.log_model) not written, the run goes on (RuntimeError: artifact storage unavailable)"
        in err
    )
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["logged_model"] is None
