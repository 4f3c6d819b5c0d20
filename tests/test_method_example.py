"""The worked example of docs/methods.md ("Adding a method") runs as written: its code registers a method
that uses a queue, its config selects HCL's estimator, and a short pretraining run through the usual entry
trains it, fills the queue and logs HCL's diagnostics."""

from __future__ import annotations

import json
import re
import shutil
import types
from pathlib import Path

import pytest

from cssl.methods import METHODS
from tests.conftest import QUICK, REPO


def example_blocks() -> tuple[str, str]:
    text = (REPO / "docs" / "methods.md").read_text()
    section = text[text.index("## Adding a method") :]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    (config,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    return code, config


def test_the_example_is_a_short_file():
    code, config = example_blocks()
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 55, f"the worked example grew to {len(lines)} lines"
    assert "estimator: hcl" in config and "QueuePool" in code


def test_the_example_trains_through_train_py(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from hydra import compose, initialize_config_dir

    from cssl.pretrain import pretrain

    code, config = example_blocks()
    module = types.ModuleType("queueclr_example")
    monkeypatch.setitem(METHODS, "queueclr", None)  # restored after the test
    exec(compile(code, "docs/methods.md", "exec"), module.__dict__)
    assert METHODS["queueclr"] is module.QueueCLR
    configs = tmp_path / "configs"
    shutil.copytree(REPO / "configs", configs)
    (configs / "method" / "queueclr.yaml").write_text(config)
    overrides = [
        *QUICK,
        "method=queueclr",
        "method.queue_size=64",
        "trainer.max_steps=3",
        "trainer.log_every_n_steps=1",
        "diagnostics.every_n_steps=1",
        f"run_dir={tmp_path / 'run'}",
    ]
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    summary = pretrain(cfg)
    assert summary["method"] == "queueclr" and summary["estimator"] == "hcl" and summary["global_step"] == 3
    metrics = json.loads((tmp_path / "run" / "summary.json").read_text())["metrics"]
    assert "neg/hcl_weight_std" in metrics and metrics["train/loss"] == metrics["train/loss"]  # finite, HCL on
    import torch

    state = torch.load(summary["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert int(state["queue.ptr"]) == (3 * 32) % 64  # three steps of 32 positives written
