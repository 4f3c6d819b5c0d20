"""The shape of the tree, checked: no import circles, the pure parts import no app layer, every module name
is unique, the method base names no method and no estimator, and the keywords of the negatives are written
once (the configs carry exactly the part's keywords with its defaults)."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import REPO, compose

CSSL = REPO / "cssl"
#: What cssl/contrastive/ may import of cssl besides itself: the error and distributed helpers.
PURE_ALLOWED = ("cssl.contrastive", "cssl.core.errors", "cssl.core.distributed")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(CSSL.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The cssl modules that ``path`` imports anywhere in it (module level or inside functions)."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            # `from pkg import module` imports the module; `from module import name`, the module
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `from cssl.x import name`: the module is cssl.x
                name = name.rpartition(".")[0]
            if name.startswith("cssl"):
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(path, known) - {name} for name, path in mods.items()}


def test_no_import_circles():
    edges = graph()
    # a package's __init__ re-exports its own modules: an edge into a package is an edge into what it re-exports,
    # so only edges between modules (and into packages from outside them) count
    edges = {
        a: {b for b in targets if not (b.startswith(a + ".") or a.startswith(b + "."))} for a, targets in edges.items()
    }
    circles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_circle_check_sees_a_circle(tmp_path, monkeypatch):
    """The walk is not vacuous: two modules importing each other inside functions are reported."""
    pkg = tmp_path / "cssl"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from cssl.b import g\n")
    (pkg / "b.py").write_text("from cssl import a\n")
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    monkeypatch.setattr(f"{__name__}.CSSL", pkg)
    assert graph()["cssl.a"] == {"cssl.b"} and graph()["cssl.b"] == {"cssl.a"}
    with pytest.raises(AssertionError, match="cssl.a -> cssl.b -> cssl.a"):
        test_no_import_circles()


def test_pure_parts_import_no_app_layer_and_no_lightning():
    for name, path in modules().items():
        if not name.startswith("cssl.contrastive"):
            continue
        bad = sorted(m for m in imports(path, set(modules())) if not m.startswith(PURE_ALLOWED))
        assert not bad, f"{name} imports {bad}: cssl/contrastive/ is pure torch"
        assert not re.search(r"^\s*(import|from) (pytorch_)?lightning", path.read_text(), re.M), name


def test_no_two_modules_share_a_name():
    stems = defaultdict(list)
    for path in CSSL.rglob("*.py"):
        if path.stem not in ("__init__", "__main__"):
            stems[path.stem].append(str(path.relative_to(REPO)))
    for path in CSSL.rglob("__init__.py"):  # a package named like a module elsewhere confuses as much
        if path.parent != CSSL:
            stems[path.parent.name].append(str(path.parent.relative_to(REPO)) + "/")
    shared = {stem: paths for stem, paths in stems.items() if len(paths) > 1}
    assert not shared, f"modules that share a name: {shared}"


def test_the_method_base_names_no_method_and_no_estimator():
    from cssl.contrastive import ESTIMATORS
    from cssl.methods import list_methods

    names = {*list_methods(), *ESTIMATORS, "mochi", "moco", "adco", "byol", "simclr"}
    for base in ("base.py", "contrast.py"):
        text = (CSSL / "methods" / base).read_text().lower()
        found = sorted(n for n in names if re.search(rf"\b{n}\b", text))
        assert not found, f"cssl/methods/{base} names {found}"


def test_the_negatives_keywords_are_written_once_and_the_configs_match():
    from cssl.contrastive.negatives import OPTIONS

    common = compose("train", ["method=simclr"]).method
    for key, default in OPTIONS.items():
        if key in ("temperature", "diagnostics_top_k"):  # each method's own; the diagnostics group's
            continue
        assert key in common, f"configs/method/common.yaml lacks method.{key}"
        assert common[key] == default, f"method.{key}: config {common[key]!r} vs the part's default {default!r}"
    assert compose("train", []).diagnostics.top_k == OPTIONS["diagnostics_top_k"]
    # each keyword of the selection, the curriculum and the anneal is a parameter with a default exactly once
    keywords = [k for k in OPTIONS if k.startswith(("fnc", "ring_", "curriculum", "beta_anneal"))]
    assert len(keywords) == 10
    defaults = defaultdict(list)
    for path in CSSL.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args
                positional = args.posonlyargs + args.args
                with_default = positional[len(positional) - len(args.defaults) :] + [
                    a for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None
                ]
                for arg in with_default:
                    if arg.arg in keywords:
                        defaults[arg.arg].append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert {k: len(defaults[k]) for k in keywords} == dict.fromkeys(keywords, 1), dict(defaults)
