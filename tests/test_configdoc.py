"""docs/configuration.md: its tables are generated from the configs and cannot drift from them."""

import shutil

from cssl import configdoc

SAMPLE = """\
# A header comment
# on two lines. Then more.
# @package _global_
name: demo
top: 1                      # the top key
                            # continued here
# a section comment, not a key's
nested:                     # a mapping
  inner: 'a # b'            # after a quoted hash
  plain: 3
other: ${x}  # interpolation
"""


def test_the_page_is_generated_from_the_configs(capsys):
    assert configdoc.main(["--check"]) == 0, capsys.readouterr().err  # stale: run python -m cssl.configdoc
    assert configdoc.uncovered(configdoc.DOC.read_text()) == []


def test_a_changed_comment_default_or_option_makes_the_page_stale(tmp_path, monkeypatch):
    configs = tmp_path / "configs"
    shutil.copytree(configdoc.CONFIGS, configs)
    blocks = [m[0] for m in configdoc.BLOCK.finditer(configdoc.DOC.read_text())]
    text = "\n".join(b for b in blocks if "keys method/common" in b or "group data" in b)
    assert "| `knn_t` | `0.07` |" in text and "`svhn`" not in text
    monkeypatch.setattr(configdoc, "CONFIGS", configs)
    common = configs / "method" / "common.yaml"
    common.write_text(common.read_text().replace("knn_t: 0.07", "knn_t: 0.05                  # a new comment"))
    (configs / "data" / "svhn.yaml").write_text((configs / "data" / "cifar10.yaml").read_text())
    new = configdoc.render(text)
    assert "| `knn_t` | `0.05` | a new comment |" in new
    assert "| `svhn` | meaning |" in new  # a new option is a new column (the last)
    (configs / "newgroup").mkdir()
    assert configdoc.uncovered(configdoc.DOC.read_text()) == ["newgroup"]


def test_comments_headers_and_values(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text(SAMPLE)
    assert configdoc.comments(path) == {
        "top": "the top key continued here",
        "nested": "a mapping",
        "nested.inner": "after a quoted hash",
        "other": "interpolation",
    }
    assert configdoc.header(path) == "A header comment on two lines. Then more."
    assert configdoc.first_sentence("AdCo (Hu et al. 2021), 200 epochs. More.") == "AdCo (Hu et al. 2021), 200 epochs."
    assert configdoc.fmt([0.5, None, True, ""]) == "[0.5, null, true, '']"
    assert configdoc.code("a | b") == "`a \\| b`"
    assert configdoc.prose("x <= `timm:<name>` | y") == "x &lt;= `timm:<name>` \\| y"
    sources = [(None, {"k": "shared"}, True), ("a", {"k": "shared"}, True), ("b", {"k": "other"}, True)]
    assert configdoc.meaning("k", sources) == "shared (b: other)"
    cited = [(None, {}, True), ("moco", {"k": "main.py:5"}, False), ("adco", {"k": "main.py:5"}, False)]
    assert configdoc.meaning("k", cited) == "moco, adco: main.py:5"
