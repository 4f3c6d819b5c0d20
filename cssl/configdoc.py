"""The configuration reference, docs/configuration.md, with its tables generated from the configs.

The page is prose around generated blocks. Each block is a marker comment, a table, and an end marker::

    <!-- configdoc: keys train -->            the keys written in configs/train.yaml
    <!-- configdoc: keys method/common -->    the keys of one group file
    <!-- configdoc: group method simclr dcl -->  one column per option of a config group (the options named
                                              first, the others after them), one row per key
    <!-- configdoc: protocols -->             the keys the linear-evaluation protocols set, one column each
    <!-- configdoc: options experiment -->    one line per option: its name and the first sentence of its header
    <!-- /configdoc -->

Each value is the default of the config Hydra composes (``python train.py group=option``, or
``linear_eval.py protocol=NAME``), interpolations left as written; each meaning is the comment of the key in
the YAML file, with the comment lines aligned under it (so a comment is edited in one place, the config).

``python -m cssl.configdoc`` rewrites the blocks of docs/configuration.md; ``--check`` only says whether the
page is stale (exit status 1), and tests/test_configdoc.py fails the same way, so the page cannot drift.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
DOC = REPO / "docs" / "configuration.md"
BLOCK = re.compile(r"(<!-- configdoc: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /configdoc -->)", re.S)
SKIPPED = ("defaults", "hydra")  # keys of a primary config that are not settings
MISSING = "-"  # a cell of a group table whose option has no such key


# -- the YAML side: comments and headers ------------------------------------------------------------------------
def comments(path: Path) -> dict[str, str]:
    """The comment of each key of a YAML config, by dotted key: the comment on its line, continued by the
    comment-only lines that start in the same column right below it."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last: tuple[str, int] | None = None  # the key whose comment may continue, and its comment's column
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            column = line.index("#")
            if last is not None and column == last[1]:
                out[last[0]] += " " + stripped.lstrip("#").strip()
            else:
                last = None
            continue
        match = re.match(r"^(\s*)([A-Za-z_][\w-]*)\s*:(.*)$", line)
        if not match:
            last = None
            continue
        indent, name, rest = len(match[1]), match[2], match[3]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([*(n for _, n in stack), name])
        stack.append((indent, name))
        column = _comment_column(rest)
        if column is None:
            last = None
            continue
        out[key] = rest[column:].lstrip("#").strip()
        last = (key, len(line) - len(rest) + column)
    return out


def _comment_column(text: str) -> int | None:
    """Where the comment of a YAML value starts (a ``#`` outside quotes, after a space), or None."""
    quote = None
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1] in " \t"):
            return i
    return None


def header(path: Path) -> str:
    """The comment block a config file starts with (without ``@package`` lines), as one paragraph."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text.startswith("@package"):
            lines.append(text)
    return " ".join(line for line in lines if line)


def first_sentence(text: str) -> str:
    """Up to the first full stop that ends a sentence (not "et al.", "e.g.", a number's)."""
    for match in re.finditer(r"\.(\s|$)", text):
        if not re.search(r"(\bet al|\be\.g|\bi\.e|\bvs)$", text[: match.start()]):
            return text[: match.start() + 1]
    return text


# -- the composed side: values ----------------------------------------------------------------------------------
def compose(config_name: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """``python <config_name>.py overrides...``'s config (Hydra's compose API), interpolations unresolved."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    if GlobalHydra.instance().is_initialized():  # inside render(): one initialisation for all its configs
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    else:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of the leaves; an empty mapping is a leaf."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def load_flat(path: Path) -> dict[str, Any]:
    import yaml

    tree = yaml.safe_load(path.read_text()) or {}
    return flatten({k: v for k, v in tree.items() if k not in SKIPPED})


def options(group: str, first: Sequence[str] = ()) -> list[str]:
    """The options of a config group: those named in ``first``, then the others by name (``common`` is not an
    option: the group's files include it)."""
    found = sorted(p.stem for p in (CONFIGS / group).glob("*.yaml") if p.stem != "common")
    unknown = [name for name in first if name not in found]
    if unknown:
        raise ValueError(f"configdoc: configs/{group}/ has no {', '.join(unknown)}")
    return [*first, *(name for name in found if name not in first)]


# -- rendering --------------------------------------------------------------------------------------------------
def fmt(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {fmt(v)}" for k, v in value.items()) + "}"
    if value == "":
        return "''"
    return str(value)


def code(value: Any) -> str:
    return "`" + fmt(value).replace("|", "\\|") + "`"


def prose(text: str) -> str:
    """A YAML comment as a table cell: pipes escaped, angle brackets outside code spans kept visible."""
    parts = text.replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# (option name or None, comments by key, whether its comment may be a row's meaning or only follow it)
Sources = Sequence[tuple[str | None, dict[str, str], bool]]


def meaning(key: str, sources: Sources) -> str:
    """The key's comment from the first source that has one and may lead (the key's own file, a shared one,
    the group's first option); then, with their option's name, the comments of the options that say something
    else (``m of the key encoder's EMA (byol: tau_base of the target's EMA ...)``)."""
    lead = next((i for i, (_, notes, leads) in enumerate(sources) if leads and notes.get(key)), None)
    first = "" if lead is None else sources[lead][1][key]
    extras: dict[str, list[str]] = {}  # comment -> the options that give it
    for i, (label, notes, _) in enumerate(sources):
        text = notes.get(key, "")
        if i == lead or label is None or not text or text.lower() in first.lower():
            continue
        text = text[len(first) :].strip() if first and text.startswith(first) else text
        extras.setdefault(text, []).append(label)
    said = "; ".join(f"{', '.join(labels)}: {text}" for text, labels in extras.items())
    if first and said:
        return prose(f"{first} ({said})")
    return prose(first or said)


def rows_with_parents(keys: Sequence[str], cells: Any, sources: Sources, width: int) -> list[list[str]]:
    """One row per key (``cells(key)`` its values); a commented mapping (``augment:  # ...``) gets a row
    ``augment.*`` before its first key."""
    rows, seen = [], set()
    for key in keys:
        parts = key.split(".")
        for depth in range(1, len(parts)):
            parent = ".".join(parts[:depth])
            if parent not in seen and meaning(parent, sources):
                rows.append([f"`{parent}.*`", *[""] * width, meaning(parent, sources)])
            seen.add(parent)
        rows.append([code(key), *cells(key), meaning(key, sources)])
    return rows


def keys_block(name: str) -> str:
    """The keys written in one config file (``train``, ``linear_eval``, ``method/common``), with the values of
    the config composed from it (for a primary config) and each key's comment (else train.yaml's)."""
    path = CONFIGS / f"{name}.yaml"
    written = load_flat(path)
    if "/" in name:  # a group file: its values as written; its name is the option's
        values = written = {k: v for k, v in written.items() if k != "name"}
    else:
        values = flatten(compose(name))
    sources: Sources = [
        (None, comments(path), True),
        (None, comments(CONFIGS / "train.yaml"), True),  # linear_eval.yaml's optimizer.* are train.yaml's
        (None, comments(CONFIGS / "data" / "digits.yaml"), True),  # and its augment.* the data's
        (None, _prefixed(comments(CONFIGS / "trainer" / "default.yaml"), "trainer."), True),
    ]
    rows = rows_with_parents(list(written), lambda key: [code(values.get(key, written[key]))], sources, 1)
    return table(["key", "default", "meaning"], rows)


def group_block(group: str, first: Sequence[str]) -> str:
    """One column per option of ``group`` (``python train.py group=option``), one row per key. With a
    ``common.yaml`` in the group, its keys appear only where an option changes or lacks them (they have
    their own table)."""
    names = options(group, first)
    values = {name: flatten(compose("train", [f"{group}={name}"])[group]) for name in names}
    common_path = CONFIGS / group / "common.yaml"
    common = load_flat(common_path) if common_path.is_file() else {}
    sources: Sources = [(None, comments(common_path), True)] if common else []
    sources += [(name, comments(CONFIGS / group / f"{name}.yaml"), True) for name in names]
    keys = []
    for key in dict.fromkeys(k for name in names for k in values[name]):
        present = [values[name][key] for name in names if key in values[name]]
        if key != "name" and not (key in common and all(v == common[key] for v in present)):
            keys.append(key)

    def cells(key: str) -> list[str]:
        return [code(values[name][key]) if key in values[name] else MISSING for name in names]

    rows = rows_with_parents(keys, cells, sources, len(names))
    return table(["key", *(f"`{name}`" for name in names), "meaning"], rows)


def protocols_block(first: Sequence[str]) -> str:
    """The keys any protocol sets, one column per protocol (``linear_eval.py protocol=NAME``); the meaning
    from linear_eval.yaml (or the data and trainer configs), then where each protocol's value comes from."""
    names = options("protocol", first)
    paths = {name: CONFIGS / "protocol" / f"{name}.yaml" for name in names}
    values = {name: flatten(compose("linear_eval", [f"protocol={name}"])) for name in names}
    sources: Sources = [
        (None, comments(CONFIGS / "linear_eval.yaml"), True),
        (None, comments(CONFIGS / "train.yaml"), True),
        (None, comments(CONFIGS / "data" / "digits.yaml"), True),
        (None, _prefixed(comments(CONFIGS / "data" / "digits.yaml"), "data."), True),
        (None, _prefixed(comments(CONFIGS / "trainer" / "default.yaml"), "trainer."), True),
        *((name, comments(path), False) for name, path in paths.items()),  # where each value comes from
    ]
    order = list(values[names[0]])
    keys = sorted(
        dict.fromkeys(k for p in paths.values() for k in load_flat(p)), key=lambda k: (k.count("."), order.index(k))
    )
    rows = [[code(key), *(code(values[name].get(key)) for name in names), meaning(key, sources)] for key in keys]
    return table(["key", *(f"`{name}`" for name in names), "meaning"], rows)


def options_block(group: str) -> str:
    """One line per option of ``group``: its name and the first sentence of its file's header."""
    lines = [
        f"- `{name}`: {prose(first_sentence(header(CONFIGS / group / f'{name}.yaml')))}" for name in options(group)
    ]
    return "\n".join(lines) + "\n"


def _prefixed(found: dict[str, str], prefix: str) -> dict[str, str]:
    return {prefix + k: v for k, v in found.items()}


def block(spec: str) -> str:
    kind, *args = spec.split()
    if kind == "keys" and len(args) == 1:
        return keys_block(args[0])
    if kind == "group" and args:
        return group_block(args[0], args[1:])
    if kind == "protocols":
        return protocols_block(args)
    if kind == "options" and len(args) == 1:
        return options_block(args[0])
    raise ValueError(f"configdoc: unknown block {spec!r}")


def render(text: str) -> str:
    """``text`` with every generated block rewritten from the configs."""
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return BLOCK.sub(lambda m: m[1] + block(m["spec"]) + m[4], text)


def uncovered(text: str) -> list[str]:
    """The config groups (folders of configs/ that Hydra composes) and primary configs no block documents."""
    specs = [m["spec"].split() for m in BLOCK.finditer(text)]
    covered = {s[1] for s in specs if s[0] in ("keys", "group", "options")} | {
        "protocol" for s in specs if s[0] == "protocols"
    }
    wanted = [p.stem for p in CONFIGS.glob("*.yaml")] + [
        p.name for p in CONFIGS.iterdir() if p.is_dir() and p.name != "sweep"
    ]
    return sorted(name for name in wanted if name not in covered)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cssl.configdoc", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether docs/configuration.md is stale")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    new = render(text)
    missing = uncovered(text)
    if missing:
        print(f"{DOC.relative_to(REPO)}: no block documents {', '.join(missing)}", file=sys.stderr)
    if args.check:
        if new != text:
            print(f"{DOC.relative_to(REPO)} is stale: run python -m cssl.configdoc", file=sys.stderr)
        return 1 if new != text or missing else 0
    if new != text:
        DOC.write_text(new)
        print(f"wrote {DOC.relative_to(REPO)}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
