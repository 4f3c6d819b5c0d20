"""Write a wheelhouse of cssl's dependencies for a node without internet, leaving out what the node already has.

    python scripts/wheelhouse.py                                   # ./wheelhouse for Python 3.12, manylinux x86-64
    python scripts/wheelhouse.py --dest /tmp/wh --python-version 3.11 --platform manylinux2014_x86_64
    python scripts/wheelhouse.py --have torch torchvision timm     # what the node holds (default below)
    python scripts/wheelhouse.py --without wandb                   # smaller: the run then logs with logger=csv

Compute nodes often hold torch, torchvision, Lightning and timm (any torch from 2.4 on) but not the rest, and
cannot reach a package index. This script resolves cssl's dependencies (pyproject.toml) for the target Python
and platform with pip's resolver (``pip install --dry-run --report``: metadata only, nothing installed),
drops the packages the node has and everything only they need, downloads the remaining wheels
(``--only-binary=:all:``), builds the few pure-Python packages published only as source (hydra's
``antlr4-python3-runtime``) into wheels, writes ``requirements.txt`` (pinned) beside them, and prints the
total size. On the node, from a plain checkout:

    python -m pip install --no-index --find-links wheelhouse -r wheelhouse/requirements.txt
    PYTHONPATH=. python train.py ...        # or: pip install --no-index --find-links wheelhouse --no-deps -e .
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HAVE = ("torch", "torchvision", "pytorch-lightning", "timm")  # what the node is assumed to hold
SOURCE_ONLY = ("antlr4-python3-runtime==4.9.*",)  # pure Python, no wheel on PyPI (hydra-core 1.3 pins it)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_dependencies(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """``[project] dependencies`` of pyproject.toml."""
    text = pyproject.read_text()
    try:
        import tomllib  # Python >= 3.11
    except ImportError:  # Python 3.10: the list is plain strings, one per line
        block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.S | re.M)
        return re.findall(r'"([^"]+)"', block.group(1)) if block else []
    return list(tomllib.loads(text)["project"]["dependencies"])


def marker_environment(python_version: str) -> dict[str, str]:
    """The PEP 508 marker values of a CPython ``python_version`` on Linux x86-64."""
    return {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "extra": "",
    }


def requirements_graph(report: dict, env: dict[str, str]) -> dict[str, list[str]]:
    """Package -> the packages its metadata requires in ``env`` (from a ``pip --report``)."""
    from packaging.requirements import Requirement

    graph: dict[str, list[str]] = {}
    for item in report["install"]:
        needs = []
        for text in item["metadata"].get("requires_dist") or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(env):
                needs.append(canonical(req.name))
        graph[canonical(item["metadata"]["name"])] = needs
    return graph


def closure(roots: list[str], graph: dict[str, list[str]], stop: set[str] = frozenset()) -> set[str]:
    """Every package reachable from ``roots`` in ``graph``, not entering ``stop``."""
    seen: set[str] = set()
    todo = [r for r in roots if r not in stop]
    while todo:
        name = todo.pop()
        if name in seen or name not in graph:
            continue
        seen.add(name)
        todo += [n for n in graph[name] if n not in stop]
    return seen


def wanted(report: dict, roots: list[str], have: list[str], env: dict[str, str], without: list[str] = ()) -> set[str]:
    """Packages to put in the wheelhouse: cssl's closure minus the node's packages and their closure, and
    minus ``without`` and what only they need."""
    graph = requirements_graph(report, env)
    present = closure([canonical(h) for h in have], graph)
    stop = present | {canonical(w) for w in without}
    return closure([canonical(r) for r in roots], graph, stop=stop) - present


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def build(args: argparse.Namespace) -> int:
    from packaging.requirements import Requirement

    dest = Path(args.dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    deps = project_dependencies()
    target = [f"--python-version={args.python_version}", "--only-binary=:all:"]
    target += [f"--platform={p}" for p in args.platform]
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(tmp) / "built"
        pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(built), *SOURCE_ONLY)
        report_path = Path(tmp) / "report.json"
        pip(
            "install",
            "--quiet",
            "--dry-run",
            "--ignore-installed",
            "--target",
            str(Path(tmp) / "target"),
            "--report",
            str(report_path),
            "--find-links",
            str(built),
            *target,
            *deps,
        )
        report = json.loads(report_path.read_text())
        roots = [Requirement(d).name for d in deps if canonical(Requirement(d).name) not in map(canonical, args.have)]
        names = wanted(report, roots, list(args.have), marker_environment(args.python_version), args.without)
        pins = sorted(
            f"{item['metadata']['name']}=={item['metadata']['version']}"
            for item in report["install"]
            if canonical(item["metadata"]["name"]) in names
        )
        for wheel in built.glob("*.whl"):
            if canonical(wheel.name.split("-")[0]) in names:
                (dest / wheel.name).write_bytes(wheel.read_bytes())
        pip("download", "--quiet", "--no-deps", "--dest", str(dest), "--find-links", str(built), *target, *pins)
    (dest / "requirements.txt").write_text(
        f"# cssl's dependencies for Python {args.python_version} ({', '.join(args.platform)}), without "
        f"{', '.join(args.have + args.without)}\n" + "\n".join(pins) + "\n"
    )
    size = sum(p.stat().st_size for p in dest.glob("*.whl"))
    largest = sorted(dest.glob("*.whl"), key=lambda p: p.stat().st_size, reverse=True)[:5]
    print(f"wheelhouse: {dest}: {len(pins)} packages, {len(list(dest.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB")
    print("largest: " + ", ".join(f"{p.name.split('-')[0]} {p.stat().st_size / 2**20:.1f} MiB" for p in largest))
    print(f"install on the node: python -m pip install --no-index --find-links {dest} -r {dest / 'requirements.txt'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default=str(REPO / "wheelhouse"), help="folder for the wheels (default ./wheelhouse)")
    parser.add_argument("--python-version", default="3.12", help="the node's Python (major.minor)")
    parser.add_argument(
        "--platform",
        nargs="+",
        default=["manylinux2014_x86_64"],
        help="pip platform tags the node accepts (manylinux2014_x86_64: glibc >= 2.17)",
    )
    parser.add_argument("--have", nargs="*", default=list(HAVE), help="packages the node already has")
    parser.add_argument(
        "--without",
        nargs="*",
        default=[],
        help="leave these out too (wandb: then logger=csv or none; scikit-learn: then no data=digits/lab and "
        "diagnostics.embedding=false)",
    )
    return build(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
