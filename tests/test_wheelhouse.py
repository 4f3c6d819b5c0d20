"""The offline install: scripts/wheelhouse.py's choice of packages, and scripts/install_offline.sh installing
from a fabricated wheelhouse into a new virtual environment with no index."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import REPO


def load_script():
    spec = importlib.util.spec_from_file_location("wheelhouse", REPO / "scripts" / "wheelhouse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def item(name: str, *requires: str) -> dict:
    return {"metadata": {"name": name, "version": "1.0", "requires_dist": list(requires)}}


# what pip's resolver reports (--report) for a project needing kornia, hydra and wandb, the node's packages included
REPORT = {
    "install": [
        item("torch", "filelock", "typing-extensions>=4", "nvidia-cublas-cu12; platform_system == 'Linux'"),
        item("torchvision", "torch", "numpy", "pillow"),
        item("pytorch-lightning", "torch", "torchmetrics", "PyYAML", "lightning-utilities"),
        item("torchmetrics", "torch", "numpy", "lightning_utilities"),
        item("lightning-utilities", "packaging"),
        item("timm", "torch", "torchvision", "huggingface-hub", "pyyaml"),
        item("huggingface-hub", "filelock", "requests"),
        item("kornia", "torch", "kornia_rs", "packaging"),
        item("kornia-rs"),
        item("hydra-core", "omegaconf", "antlr4-python3-runtime==4.9.*", "importlib-resources; python_version < '3.9'"),
        item("omegaconf", "PyYAML", "antlr4-python3-runtime"),
        item("antlr4-python3-runtime"),
        item("importlib-resources"),
        item("wandb", "requests", "protobuf", "pytest; extra == 'test'"),
        item("requests", "urllib3"),
        item("urllib3"),
        item("protobuf"),
        item("pytest"),
        *[
            item(n)
            for n in ("filelock", "typing-extensions", "nvidia-cublas-cu12", "numpy", "pillow", "pyyaml", "packaging")
        ],
    ]
}
ROOTS = ["torchmetrics", "kornia", "hydra-core", "wandb", "numpy"]
HAVE = ["torch", "torchvision", "pytorch-lightning", "timm"]


def test_wheelhouse_leaves_out_what_the_node_has_and_what_markers_exclude():
    wh = load_script()
    names = wh.wanted(REPORT, ROOTS, HAVE, wh.marker_environment("3.12"))
    assert names == {"kornia", "kornia-rs", "hydra-core", "omegaconf", "antlr4-python3-runtime", "wandb", "protobuf"}
    # requests and urllib3 come with timm's huggingface-hub: the node has them


def test_wheelhouse_without_a_package_drops_what_only_it_needs():
    wh = load_script()
    names = wh.wanted(REPORT, ROOTS, HAVE, wh.marker_environment("3.12"), without=["wandb"])
    assert "wandb" not in names and "protobuf" not in names and "kornia" in names
    older = wh.wanted(REPORT, ROOTS, HAVE, wh.marker_environment("3.8"))
    assert "importlib-resources" in older


def test_wheelhouse_reads_the_project_dependencies():
    deps = load_script().project_dependencies()
    assert any(d.startswith("kornia") for d in deps) and any(d.startswith("hydra-core") for d in deps)


def make_wheel(folder: Path, name: str, version: str, code: str, requires: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel of one module ``name`` written by hand (no build backend, no network)."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": code,
        f"{dist}/METADATA": "Metadata-Version: 2.1\n"
        f"Name: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: cssl-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


def test_offline_install_into_a_new_venv(tmp_path):
    house = tmp_path / "wheelhouse"
    house.mkdir()
    make_wheel(house, "cssl_probe_dep", "0.2", "VALUE = 41\n")
    make_wheel(
        house, "cssl_probe", "1.0", "from cssl_probe_dep import VALUE\nANSWER = VALUE + 1\n", ("cssl_probe_dep>=0.2",)
    )
    (house / "requirements.txt").write_text("# fabricated\ncssl_probe==1.0\n")
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=300)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PYTHON=str(python), PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.update(http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")  # any network use would fail
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "install_offline.sh"), str(house)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    check = subprocess.run(
        [str(python), "-c", "import cssl_probe; print(cssl_probe.ANSWER)"], capture_output=True, text=True
    )
    assert check.stdout.strip() == "42", check.stderr


def test_offline_install_without_a_wheelhouse_is_one_line(tmp_path):
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "install_offline.sh"), str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
