"""docs/recipes.yaml against the experiment configs and docs/recipes.md: every experiment config composes, its
objects build, every row's cssl value is the composed config's, and the page is the rendering of the table."""

import copy
from dataclasses import replace
from functools import cache

import pytest

from cssl import recipes
from cssl.methods import method_class
from cssl.models.optim import OptimSettings
from cssl.pretrain import pretrain_views
from cssl.runtime import run
from tests.conftest import REPO, StandIn

TABLE = recipes.load_table()
EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))


@cache
def protocol_config(name):
    return recipes.compose_protocol(name)


def recipe_value(recipe, key):
    (value,) = [row.cssl[key] for row in recipe.rows if key in row.cssl]
    return value


def test_the_table_covers_exactly_the_experiment_configs():
    assert sorted(TABLE.recipes) == EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_row_holds_in_the_composed_config_and_its_objects_build(name):
    recipe = TABLE.recipes[name]
    cfg = recipes.compose_experiment(name, ["logger=none"])
    protocol = protocol_config(recipe.protocol)
    assert protocol.protocol_name == recipe.protocol
    assert recipes.mismatches(recipe, cfg, protocol) == []
    assert recipe.rows and all(row.cssl or row.note or row.protocol for row in recipe.rows)
    # the keys an experiment file sets must reach real constructor arguments (compose alone accepts new keys)
    options = run.plain(cfg.method)
    cls = method_class(options.pop("name"))
    cls(
        StandIn(),
        num_classes=10,
        batch_size=cfg.data.batch_size,
        optim=OptimSettings(**run.plain(cfg.optimizer)),
        **options,
    )
    data = run.build_data(cfg, train_split="pretrain", train_transform=None)
    views = pretrain_views(cfg).transform(data.image_size, data.mean, data.std)
    assert len(views.views) == 2 + len(cfg.data.multicrop.sizes if cfg.data.multicrop else [])


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_each_experiment_file_names_its_linear_evaluation_protocol(name):
    recipe = TABLE.recipes[name]
    assert recipe.protocol, f"{name}: no row names a linear-evaluation protocol"
    if recipe.target:
        assert recipe.target["protocol"] == recipe.protocol
    header = (REPO / "configs" / "experiment" / f"{name}.yaml").read_text()
    assert recipes.eval_command(recipe) in header
    assert f"protocol={recipe.protocol} data={recipe_value(recipe, 'data.name')}" in recipes.eval_command(recipe)


def test_docs_page_is_the_rendered_table():
    assert (REPO / "docs" / "recipes.md").read_text() == recipes.render(TABLE), "run python -m cssl.recipes"


def test_a_value_that_differs_from_the_table_is_reported():
    recipe = TABLE.recipes["stl10_hcl"]
    assert recipes.mismatches(recipe, recipes.compose_experiment("stl10_hcl", ["method.beta=0.5"])) == [
        "stl10_hcl / loss: method.beta is 0.5, the table says 1.0"
    ]
    cfg = recipes.compose_experiment("stl10_hcl", ["data.augment.blur_p=0"])  # the derived kernel disappears too
    lines = recipes.mismatches(recipe, cfg)
    assert len(lines) == 2 and "data.augment.blur_p is 0" in lines[0] and "derived.blur_kernel is None" in lines[1]
    row = replace(recipe.rows[0], cssl={"method.no_such_key": 1})
    lines = recipes.mismatches(replace(recipe, rows=(row,)), cfg)
    assert lines == [f"stl10_hcl / {row.item}: method.no_such_key is not a config key (the table says 1)"]
    (evaluation,) = [row for row in recipe.rows if row.protocol]
    protocol = recipes.compose_protocol("dcl_hcl", ["optimizer.lr=0.01"])
    assert recipes.mismatches(replace(recipe, rows=(evaluation,)), cfg, protocol) == [
        "stl10_hcl / linear evaluation: linear_eval.py protocol=dcl_hcl: optimizer.lr is 0.01, the table says 0.001"
    ]


@pytest.mark.parametrize(
    "expected, actual, equal",
    [
        (0.5, 0.5, True),
        (1.0e-3, 0.001, True),
        (1, 1.0, True),
        (0.2023, 0.2024, False),
        (True, 1, False),
        (False, False, True),
        ([0.2, 1.0], [0.2, 1.0], True),
        ([0.2, 1.0], [0.2], False),
        ([[0.172, 0.86]], [[0.172, 0.861]], False),
        (None, None, True),
        ("split", "shuffle", False),
    ],
)
def test_same(expected, actual, equal):
    assert recipes.same(expected, actual) is equal


def test_blur_kernel_is_the_one_the_augmentation_uses():
    from cssl.data.augment import ViewAugment

    cfg = recipes.compose_experiment("stl10_simclr")
    view = ViewAugment(int(cfg.data.image_size), **run.plain(cfg.data.augment))
    assert recipes.value_at(cfg, "derived.blur_kernel") == 3 == view.blur.kernel_size
    assert recipes.value_at(recipes.compose_experiment("cifar10_moco_demo"), "derived.blur_kernel") is None


def test_malformed_tables_are_refused(tmp_path):
    import yaml

    good = yaml.safe_load(recipes.TABLE.read_text())
    cases = {
        "unknown source": lambda t: t["fragments"]["simclr_loss"][0].update(ref="NoSuch:main.py:1"),
        "unknown use": lambda t: t["recipes"]["stl10_dcl"].update(use=["no_such_fragment"]),
        "use cycle": lambda t: t["recipes"]["stl10_simclr"].update(use=["stl10_dcl"]),
        "no key and no note": lambda t: t["fragments"]["stl10_data"][1].pop("note"),
        "unknown derived value": lambda t: t["fragments"]["simclr_loss"][0]["cssl"].update({"derived.nope": 1}),
        "linear_eval without protocol": lambda t: t["fragments"]["simclr_loss"][0].update(linear_eval={"a": 1}),
    }
    for what, edit in cases.items():
        table = copy.deepcopy(good)
        edit(table)
        path = tmp_path / "recipes.yaml"
        path.write_text(yaml.dump(table, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper)))
        with pytest.raises(ValueError, match="recipes table"):
            recipes.load_table(path)
        assert what


def test_refs_render_as_links_at_the_pinned_commit():
    sources = TABLE.sources
    link = recipes.ref_link("DCL:utils.py:43-49", sources)
    assert link == (
        "[DCL utils.py:43-49](https://github.com/chingyaoc/DCL/blob/7d6345f6a2e4e2615e63f39966ad0dad3f54f954/utils.py#L43-L49)"
    )
    notebook = recipes.ref_link("MoCo-demo:colab/moco_cifar10_demo.ipynb:cell 4 L16", sources)
    assert notebook.endswith("/colab/moco_cifar10_demo.ipynb)") and "cell 4 L16" in notebook
    assert recipes.fmt([0.2, 1.0]) == "[0.2, 1.0]" and recipes.fmt(None) == "null" and recipes.fmt(True) == "true"


def test_check_mode_reports_a_stale_page_and_a_differing_value(tmp_path, monkeypatch, capsys):
    one = recipes.Table(TABLE.sources, {"stl10_dcl": TABLE.recipes["stl10_dcl"]})
    monkeypatch.setattr(recipes, "load_table", lambda: one)
    monkeypatch.setattr(recipes, "DOC", tmp_path / "recipes.md")
    monkeypatch.setattr(recipes, "REPO", tmp_path)
    assert recipes.main([]) == 0 and (tmp_path / "recipes.md").read_text() == recipes.render(one)
    assert recipes.main(["--check"]) == 0
    (tmp_path / "recipes.md").write_text("old\n")
    compose = recipes.compose_experiment
    monkeypatch.setattr(recipes, "compose_experiment", lambda name: compose(name, ["method.tau_plus=0.2"]))
    monkeypatch.setattr(
        recipes, "compose_protocol", lambda name: recipes.compose_config("linear_eval", ["protocol=moco"])
    )
    assert recipes.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "recipes.md is stale" in out and "method.tau_plus is 0.2, the table says 0.1" in out
    assert "protocol=dcl_hcl: optimizer.name is 'sgd', the table says 'adam'" in out


def test_readme_reproduction_table_quotes_each_target_with_its_protocol():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### 4. A published recipe") : readme.index("### 5. ")]
    assert "(docs/recipes.md)" in section
    for name, recipe in TABLE.recipes.items():
        if not recipe.target:
            continue
        (line,) = [line for line in section.splitlines() if f"`{name}`" in line]
        assert f"{recipe.target['value']}" in line, name
        if recipe.protocol != "default":
            assert f"protocol={recipe.protocol}" in line, name
