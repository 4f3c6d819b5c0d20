"""The lab dataset (cssl.data.lab): deterministic, quick, cached, disjoint digit instances, checked options."""

from __future__ import annotations

import time

import pytest
import torch

from cssl.core.errors import ConfigError
from cssl.data import build_datamodule
from cssl.data import lab as L


def options(**overrides):
    kwargs = dict(
        generator_seed=0, train_size=200, val_size=50, glyph_scale=(0.4, 0.85), min_contrast=0.35, rotation=0.0
    )
    kwargs.update(overrides)
    return L.lab_options(**kwargs, image_size=32)


def test_the_same_seed_gives_the_same_images_and_another_seed_others():
    a, b, c = L.generate(options()), L.generate(options()), L.generate(options(generator_seed=1))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["train_images"], c["train_images"])


def test_the_default_size_is_made_in_seconds():
    start = time.perf_counter()
    data = L.generate(options(train_size=2000, val_size=1000))
    assert time.perf_counter() - start < 20  # about 0.3 s here; a generous bound against a pathological loop
    assert data["train_images"].shape == (2000, 3, 32, 32) and data["train_images"].dtype == torch.uint8
    assert data["val_labels"].shape == (1000,) and set(data["val_labels"].tolist()) == set(range(10))


def test_images_follow_the_options():
    """Two grey levels per image at least min_contrast apart, either polarity, grey (R = G = B)."""
    data = L.generate(options(train_size=400, min_contrast=0.6))
    images = data["train_images"].float() / 255
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    flat = images[:, 0].flatten(1)
    spread = flat.max(1).values - flat.min(1).values
    assert spread.min() >= 0.6 - 0.02  # the digit's ink reaches its level (bilinear edges only add levels between)
    corners = images[:, 0, 0, 0]  # background (the digit stays inside and never covers a corner fully)
    light_background = (corners > flat.mean(1)).float().mean()
    assert 0.3 < light_background < 0.7  # both polarities


def test_glyph_scale_bounds_the_digit_size():
    small = L.generate(options(train_size=300, glyph_scale=(0.3, 0.3), min_contrast=1.0))["train_images"]
    large = L.generate(options(train_size=300, glyph_scale=(0.9, 0.9), min_contrast=1.0))["train_images"]

    def ink_fraction(images):  # pixels away from the background level (the corner)
        x = images[:, 0].float()
        return ((x - x[:, :1, :1]).abs() > 64).float().mean()

    assert ink_fraction(large) > 4 * ink_fraction(small)


def test_train_and_held_out_images_come_from_disjoint_digit_instances():
    (train_glyphs, _), (val_glyphs, _) = L._glyphs()
    assert len(train_glyphs) == 1437 and len(val_glyphs) == 360
    flat_train = train_glyphs.flatten(1)
    matches = (torch.cdist(val_glyphs.flatten(1), flat_train) < 1e-6).any(1)
    assert not matches.any()  # no held-out glyph is a training glyph (the digits split, as data=digits)


def test_the_cache_is_reused_and_a_damaged_file_is_made_again(tmp_path, monkeypatch):
    opts = options()
    first = L.load_or_generate(tmp_path, opts)
    (path,) = (tmp_path / "lab").glob("*.pt")
    calls = []
    real = L.generate
    monkeypatch.setattr(L, "generate", lambda o: calls.append(o) or real(o))
    again = L.load_or_generate(tmp_path, opts)
    assert calls == [] and torch.equal(again["train_images"], first["train_images"])
    path.write_bytes(b"not a checkpoint")
    remade = L.load_or_generate(tmp_path, opts)
    assert len(calls) == 1 and torch.equal(remade["train_images"], first["train_images"])
    assert not list((tmp_path / "lab").glob("*.tmp"))


def test_an_unwritable_root_only_loses_the_cache(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # root/lab cannot be made under a file
    data = L.load_or_generate(blocker, options())
    assert data["train_images"].shape[0] == 200


@pytest.mark.parametrize(
    "key, value, word",
    [
        ("train_size", 5, "data.train_size"),
        ("val_size", 2.5, "data.val_size"),
        ("glyph_scale", (0.9, 0.4), "data.glyph_scale"),
        ("glyph_scale", (0.0, 0.5), "data.glyph_scale"),
        ("min_contrast", 0.0, "data.min_contrast"),
        ("rotation", 200, "data.rotation"),
        ("generator_seed", -1, "data.generator_seed"),
    ],
)
def test_bad_options_are_one_line_errors_before_any_work(key, value, word, tmp_path):
    with pytest.raises(ConfigError, match=word) as err:
        build_datamodule("lab", root=str(tmp_path), **{key: value})
    assert "\n" not in str(err.value)
    assert not (tmp_path / "lab").exists()


def test_other_image_sizes_draw_the_images_at_that_size(tmp_path):
    dm = build_datamodule("lab", root=str(tmp_path), train_size=20, val_size=10, image_size=48, batch_size=4)
    dm.check()
    assert dm.sets["val"][0][0].shape == (3, 48, 48)
    assert dm.options["image_size"] == 48  # part of the cache key: another size is another file
