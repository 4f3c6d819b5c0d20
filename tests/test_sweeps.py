"""configs/sweep/*.yaml: valid W&B sweeps whose parameters, passed as the W&B agent passes them
(``${args_no_hyphens}``: key=value), compose with the Hydra config and build the method; run labels."""

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from cssl.methods import ContrastiveMethod, method_class
from cssl.models.optim import OptimSettings
from cssl.runtime.loggers import run_group, run_tags
from tests.conftest import REPO, StandIn, compose

SWEEPS = sorted((REPO / "configs" / "sweep").glob("*.yaml"))
COMMAND = ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]
TOP_LEVEL = {
    "name",
    "description",
    "program",
    "method",
    "metric",
    "parameters",
    "command",
    "early_terminate",
    "run_cap",
}
DISTRIBUTIONS = {
    "int_uniform": int,
    "uniform": float,
    "log_uniform_values": float,
    "q_uniform": float,
    "q_log_uniform_values": float,
}
CONFIG_GROUPS = {"method", "data", "trainer", "logger", "experiment"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def choices(spec: dict) -> list:
    """The values a parameter takes: its list, its constant, or its distribution's bounds."""
    if "values" in spec:
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    return [spec["min"], spec["max"]]


def test_the_standard_questions_have_sweeps() -> None:
    names = {p.stem for p in SWEEPS}
    assert {"method", "estimator_pool", "temperature", "tau_plus", "beta", "batch_size"} <= names
    assert {"queue_size", "bank_size", "mochi"} <= names
    assert "negatives" in names  # with and without negatives (BYOL, the negative-free control)
    assert {load(p)["method"] for p in SWEEPS} == {"grid", "bayes"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_is_a_valid_wandb_sweep(path: Path) -> None:
    sweep = load(path)
    assert set(sweep) <= TOP_LEVEL and {"program", "method", "metric", "parameters", "command"} <= set(sweep)
    assert sweep["program"] == "train.py" and (REPO / sweep["program"]).is_file()
    assert sweep["command"] == COMMAND
    assert sweep["method"] in ("grid", "random", "bayes")
    assert sweep["metric"] == {"name": "val/knn_top1", "goal": "maximize"}  # a metric every method logs
    for name, spec in sweep["parameters"].items():
        kinds = {"value", "values", "distribution"} & set(spec)
        assert len(kinds) == 1, f"{name}: exactly one of value, values, distribution"
        if "values" in spec:
            assert isinstance(spec["values"], list) and len(spec["values"]) == len(set(map(str, spec["values"]))) > 1
        if "distribution" in spec:
            assert sweep["method"] != "grid", f"{name}: a grid sweep takes lists of values only"
            cast = DISTRIBUTIONS[spec["distribution"]]
            assert set(spec) == {"distribution", "min", "max"} and spec["min"] < spec["max"]
            assert all(isinstance(spec[k], cast) for k in ("min", "max")), f"{name}: bounds must be {cast.__name__}"
    labels = sweep["parameters"]
    assert labels["logger.group"] == {"value": f"sweep_{path.stem}"}
    assert labels["logger.tags"] == {"value": f"[sweep,{path.stem}]"}
    assert labels["run_dir"]["value"].startswith(f"runs/sweep_{path.stem}/")
    searched = [k for k, spec in labels.items() if "value" not in spec]
    assert searched, "a sweep searches at least one parameter"
    if sweep["method"] == "grid":
        assert "seed" in searched, "grid sweeps repeat each point over seeds (the report averages them)"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_parameters_compose_with_the_hydra_config(path: Path) -> None:
    params = load(path)["parameters"]
    base = {name: choices(spec)[0] for name, spec in params.items()}
    points = [base] + [{**base, name: v} for name, spec in params.items() for v in choices(spec)[1:]]
    for point in points:
        # the agent's own formatting of ${args_no_hyphens}
        overrides = create_sweep_command_args({"args": {k: {"value": v} for k, v in point.items()}})["args_no_hyphens"]
        cfg = compose("train", overrides)
        for key, value in point.items():
            if key in CONFIG_GROUPS:
                assert cfg[key].name == value
            elif key == "logger.tags":
                assert OmegaConf.select(cfg, key) == value.strip("[]").split(",")
            elif key == "run_dir":
                assert cfg.run_dir.startswith(f"runs/sweep_{path.stem}/") and "${" not in cfg.run_dir
            else:
                assert OmegaConf.select(cfg, key) == value, f"{key}={value} did not reach the config"
        options = OmegaConf.to_container(cfg.method, resolve=True)
        cls = method_class(options.pop("name"))
        cls(StandIn(), num_classes=10, batch_size=cfg.data.batch_size, optim=OptimSettings(**cfg.optimizer), **options)


def test_default_group_and_tags() -> None:
    assert run_group(None, method="dcl", data="cifar10") == "dcl_cifar10"
    assert (
        run_group("", method="dcl", data="cifar10", sweep="multirun_2025-01-01_10-00-00")
        == "multirun_2025-01-01_10-00-00"
    )
    assert run_group("mine", method="dcl", data="cifar10", sweep="multirun_x") == "mine"
    assert run_tags(["a", "method=dcl"], method="dcl", estimator="dcl", data="digits") == [
        "a",
        "method=dcl",
        "data=digits",
        "estimator=dcl",
    ]
    assert run_tags(None, method="moco", estimator=None, data="digits") == ["method=moco", "data=digits"]
    for bad in ("a,b", [""], [3]):
        with pytest.raises(ValueError, match="logger.tags must be a list"):
            run_tags(bad, method="m", estimator=None, data="d")
    with pytest.raises(ValueError, match="logger.group must be a string"):
        run_group(["x"], method="m", data="d")


def test_the_negatives_sweep_compares_methods_with_and_without_negatives() -> None:
    from cssl.methods import METHODS

    params = load(REPO / "configs" / "sweep" / "negatives.yaml")["parameters"]
    methods = params["method"]["values"]
    assert {issubclass(METHODS[m], ContrastiveMethod) for m in methods} == {
        True,
        False,
    }  # both kinds, on one data and backbone
    assert "value" in params["data"] and "value" in params["backbone"]
