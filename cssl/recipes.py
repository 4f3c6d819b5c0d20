"""The published recipes item by item: one table (docs/recipes.yaml) drives both docs/recipes.md and the test
that composes every experiment config and asserts each row's cssl value, so the two cannot drift apart.

``python -m cssl.recipes`` rewrites docs/recipes.md from the table; ``python -m cssl.recipes --check`` instead
composes every experiment config (and the linear_eval.py config of its protocol), lists each row whose config
value differs from the table and says whether docs/recipes.md is stale (exit status 1 if anything differs).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "docs" / "recipes.yaml"
DOC = REPO / "docs" / "recipes.md"
CONFIGS = REPO / "configs"


@dataclass(frozen=True)
class Row:
    """One item of a recipe: the official value, where it was read, and the cssl keys that hold it."""

    item: str
    official: str
    refs: tuple[str, ...]
    cssl: dict[str, Any]
    note: str | None = None
    protocol: str | None = None  # the linear-evaluation protocol (linear_eval.py protocol=NAME) of this row
    linear_eval: dict[str, Any] | None = None  # values of the composed linear_eval.py config with that protocol


@dataclass(frozen=True)
class Recipe:
    """The rows of one experiment config (configs/experiment/NAME.yaml) and its published target."""

    name: str
    title: str
    target: dict[str, Any] | None
    rows: tuple[Row, ...]

    @property
    def protocol(self) -> str | None:
        """The linear-evaluation protocol named by the recipe's rows (the last one wins)."""
        named = [row.protocol for row in self.rows if row.protocol]
        return named[-1] if named else None


@dataclass(frozen=True)
class Table:
    """The resolved table: official repositories by short name (repo, commit) and the recipes by experiment."""

    sources: dict[str, dict[str, str]]
    recipes: dict[str, Recipe]


def load_table(path: Path = TABLE) -> Table:
    """Read and resolve the table: each recipe's ``use`` list (fragments or recipes) then its own rows; a row
    whose item is already present replaces it in place. Raises ``ValueError`` on a malformed table."""
    data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    sources, fragments, raw = data["sources"], data.get("fragments", {}), data["recipes"]
    resolved: dict[str, list[Row]] = {}

    def rows_of(name: str, stack: tuple[str, ...] = ()) -> list[Row]:
        if name in stack:
            raise ValueError(f"recipes table: 'use' cycle through {' -> '.join((*stack, name))}")
        if name in resolved:
            return resolved[name]
        if name in raw:
            spec = raw[name]
            rows: list[Row] = []
            for used in spec.get("use", []):
                rows = merge(rows, rows_of(used, (*stack, name)))
            rows = merge(rows, [parse_row(r, sources, name) for r in spec.get("rows", [])])
        elif name in fragments:
            rows = [parse_row(r, sources, name) for r in fragments[name]]
        else:
            raise ValueError(f"recipes table: {stack[-1] if stack else '?'} uses unknown {name!r}")
        resolved[name] = rows
        return rows

    recipes = {
        name: Recipe(name, str(spec["title"]), spec.get("target"), tuple(rows_of(name))) for name, spec in raw.items()
    }
    return Table(sources, recipes)


def merge(rows: list[Row], new: list[Row]) -> list[Row]:
    """``rows`` with each row of ``new`` replacing the row of the same item, or appended."""
    out = list(rows)
    for row in new:
        index = next((i for i, old in enumerate(out) if old.item == row.item), None)
        if index is None:
            out.append(row)
        else:
            out[index] = row
    return out


def parse_row(spec: dict[str, Any], sources: dict[str, Any], where: str) -> Row:
    """One row of the table, checked: known sources, known derived values, a reason for rows without keys."""
    item = spec.get("item")
    if not item or "official" not in spec:
        raise ValueError(f"recipes table: a row of {where} lacks 'item' or 'official': {spec!r}")
    refs = spec.get("ref") or []
    refs = tuple([refs] if isinstance(refs, str) else refs)
    for ref in refs:
        if ref.split(":", 1)[0] not in sources or ref.count(":") < 2:
            raise ValueError(f"recipes table: {where} / {item}: ref {ref!r} is not SOURCE:path:lines of a known source")
    cssl = dict(spec.get("cssl") or {})
    for key in cssl:
        if key.startswith("derived.") and key.removeprefix("derived.") not in DERIVED:
            raise ValueError(f"recipes table: {where} / {item}: unknown derived value {key!r}")
    if not cssl and not spec.get("note") and not spec.get("protocol"):
        raise ValueError(f"recipes table: {where} / {item}: a row without cssl keys must say why in 'note'")
    linear_eval = spec.get("linear_eval")
    if linear_eval is not None and not spec.get("protocol"):
        raise ValueError(f"recipes table: {where} / {item}: 'linear_eval' values need the row's 'protocol'")
    return Row(str(item), str(spec["official"]), refs, cssl, spec.get("note"), spec.get("protocol"), linear_eval)


# -- values of the composed config -------------------------------------------------------------------------
def _blur_kernel(cfg: Any) -> int | None:
    """The blur kernel cssl/data/augment.py uses for the main views (None without blur)."""
    from cssl.data.augment import blur_kernel_size

    size, p = int(cfg.data.image_size), cfg.data.augment.blur_p
    p = (0.5 if size >= 96 else 0.0) if p is None else p
    return blur_kernel_size(size) if p > 0 else None


DERIVED: dict[str, Callable[[Any], Any]] = {"blur_kernel": _blur_kernel}
_MISSING = object()


def value_at(cfg: Any, key: str) -> Any:
    """The value of ``key`` in the composed config (``derived.NAME``: computed), or a missing marker."""
    from omegaconf import OmegaConf

    if key.startswith("derived."):
        return DERIVED[key.removeprefix("derived.")](cfg)
    value = OmegaConf.select(cfg, key, default=_MISSING)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def same(expected: Any, actual: Any) -> bool:
    """Equality of table and config values: numbers to 1e-12 relative, lists element-wise, bools strictly."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return math.isclose(expected, actual, rel_tol=1e-12, abs_tol=0.0)
    if isinstance(expected, list | tuple) and isinstance(actual, list | tuple):
        return len(expected) == len(actual) and all(same(e, a) for e, a in zip(expected, actual, strict=True))
    return expected == actual


def mismatches(recipe: Recipe, cfg: Any, protocol_cfg: Any = None) -> list[str]:
    """One line per value of ``recipe`` that the composed configs do not hold: the training config ``cfg``
    (each row's ``cssl``) and, if given, the linear-evaluation config ``protocol_cfg`` composed with the
    recipe's protocol (each row's ``linear_eval``)."""
    out = []
    for row in recipe.rows:
        checks = [(cfg, row.cssl, "")]
        if protocol_cfg is not None and row.linear_eval:
            checks.append((protocol_cfg, row.linear_eval, f"linear_eval.py protocol={row.protocol}: "))
        for config, values, prefix in checks:
            for key, expected in values.items():
                actual = value_at(config, key)
                where = f"{recipe.name} / {row.item}: {prefix}{key}"
                if actual is _MISSING:
                    out.append(f"{where} is not a config key (the table says {expected!r})")
                elif not same(expected, actual):
                    out.append(f"{where} is {actual!r}, the table says {expected!r}")
    return out


def compose_experiment(name: str, overrides: Sequence[str] = ()) -> Any:
    """The training config of ``python train.py experiment=NAME overrides...`` (Hydra's compose API)."""
    return compose_config("train", [f"experiment={name}", *overrides])


def compose_protocol(name: str, overrides: Sequence[str] = ()) -> Any:
    """The config of ``python linear_eval.py protocol=NAME overrides...``."""
    return compose_config("linear_eval", [f"protocol={name}", *overrides])


def compose_config(config_name: str, overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


# -- the markdown page --------------------------------------------------------------------------------------
def fmt(value: Any) -> str:
    """A config value as it is written on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def cell(text: str) -> str:
    """Text for one markdown table cell (one line, pipes escaped)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def ref_link(ref: str, sources: dict[str, dict[str, str]]) -> str:
    """``SOURCE:path:lines`` -> a markdown link to those lines at the pinned commit."""
    source, rest = ref.split(":", 1)
    path, lines = rest.rsplit(":", 1)
    repo, commit = sources[source]["repo"], sources[source]["commit"]
    url = f"https://github.com/{repo}/blob/{commit}/{path}"
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", lines)
    if match:
        url += f"#L{match[1]}" + (f"-L{match[2]}" if match[2] else "")
    return f"[{source} {path}:{lines}]({url})"


def eval_command(recipe: Recipe) -> str | None:
    """The linear_eval.py command of the recipe's protocol, with the data and the normalisation constants of
    its pretraining (linear_eval.py normalises with its own data config's constants)."""
    if not recipe.protocol:
        return None
    values = {k: v for row in recipe.rows for k, v in row.cssl.items()}
    parts = ["python linear_eval.py ckpt=RUN_DIR", f"protocol={recipe.protocol}"]
    if "data.name" in values:
        parts.append(f"data={values['data.name']}")
        if values["data.name"] not in ("digits", "lab"):  # embedded or generated, no files
            parts.append("data.root=DATA")
    for key in ("data.mean", "data.std"):
        if key in values:
            parts.append(f"{key}={fmt(values[key]).replace(' ', '')}")
    return " ".join(parts)


def target_text(recipe: Recipe, sources: dict[str, dict[str, str]]) -> str:
    """The published target with its metric and a link to where it is published."""
    target = recipe.target
    if not target:
        return "no published target"
    where = f" ({ref_link(target['ref'], sources)})" if target.get("ref") else ""
    return f"{target['value']} {target['metric']}{where}"


def render(table: Table) -> str:
    """docs/recipes.md: a summary, then one table per experiment config."""
    sources, recipes = table.sources, table.recipes
    lines = [
        "# Published recipes, item by item",
        "",
        "<!-- Generated by `python -m cssl.recipes` from docs/recipes.yaml: edit the table there, not this page. -->",
        "",
        "Each experiment config (`configs/experiment/NAME.yaml`) set against the official code it follows: the",
        "official value, the file and line it was read from (linked at the commit that was read), and the cssl",
        "config key that holds it. Where cssl deliberately differs, or no key holds an item, the note says why.",
        "One table, `docs/recipes.yaml`, drives this page and `tests/test_recipes.py`, which composes every",
        "experiment config with Hydra and asserts every value of the cssl column, so the two cannot drift.",
        "`python -m cssl.recipes --check` does the same from the command line.",
        "",
        "Sources: "
        + ", ".join(
            f"{name} = [{s['repo']}@{s['commit'][:7]}](https://github.com/{s['repo']}/tree/{s['commit']})"
            for name, s in sources.items()
        )
        + ".",
        "",
        "| experiment | published target | linear evaluation |",
        "|---|---|---|",
    ]
    for name, recipe in recipes.items():
        protocol = f"`protocol={recipe.protocol}`" if recipe.protocol else ""
        lines.append(f"| [`{name}`](#{name}) | {cell(target_text(recipe, sources))} | {protocol} |")
    for name, recipe in recipes.items():
        lines += ["", f"## {name}", "", f"{cell(recipe.title)}. Target: {target_text(recipe, sources)}.", ""]
        lines.append(f"    python train.py experiment={name} data.root=DATA")
        if recipe.protocol:
            lines.append(f"    {eval_command(recipe)}")
        lines += ["", "| item | official value | read from | cssl | note |", "|---|---|---|---|---|"]
        for row in recipe.rows:
            refs = "<br>".join(ref_link(r, sources) for r in row.refs) or "-"
            keys = [f"`{k}={fmt(v)}`" for k, v in row.cssl.items()]
            if row.protocol:
                keys.append(f"`linear_eval.py protocol={row.protocol}`")
                keys += [f"`{k}={fmt(v)}`" for k, v in (row.linear_eval or {}).items()]
            note = cell(row.note) if row.note else ""
            lines.append(f"| {cell(row.item)} | {cell(row.official)} | {refs} | {'<br>'.join(keys)} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cssl.recipes", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on differences")
    args = parser.parse_args(argv)
    table = load_table()
    text = render(table)
    if not args.check:
        DOC.write_text(text)
        print(f"wrote {DOC.relative_to(REPO)} ({len(table.recipes)} recipes)")
        return 0
    problems = []
    for name, recipe in table.recipes.items():
        protocol = compose_protocol(recipe.protocol) if recipe.protocol else None
        problems += mismatches(recipe, compose_experiment(name), protocol)
    if not DOC.is_file() or DOC.read_text() != text:
        problems.append(f"{DOC.relative_to(REPO)} is stale: run python -m cssl.recipes")
    for line in problems:
        print(line)
    print(f"{len(table.recipes)} recipes, {len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
