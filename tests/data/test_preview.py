"""python -m cssl.preview: the views training would feed, as views.pt and views.png, on digits and on an image
folder; bad options are one-line errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cssl import preview
from tests.conftest import REPO, cli_env


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """``python -m cssl.preview argv`` in this process: (exit code, stdout, stderr)."""
    code = 0
    try:
        preview.main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def check_files(folder, sizes: list[int], images: int) -> list[torch.Tensor]:
    """views.pt holds one uint8 (N, 3, S_v, S_v) tensor per view; views.png shows them cell by cell."""
    views = torch.load(folder / "views.pt", weights_only=True)
    assert isinstance(views, list) and [v.shape for v in views] == [(images, 3, s, s) for s in sizes]
    assert all(v.dtype == torch.uint8 for v in views)
    png = np.asarray(Image.open(folder / "views.png").convert("RGB"))  # (rows * cell, columns * cell, 3)
    zoom = -(-preview.CELL_MIN // max(sizes))
    cell = max(sizes) * zoom + 2
    assert png.shape == (images * cell - 2, len(sizes) * cell - 2, 3)
    for col, view in enumerate(views):  # each cell's top-left holds the view, enlarged by whole factors
        for row in range(images):
            s = view.shape[-1] * zoom
            shown = png[row * cell : row * cell + s : zoom, col * cell : col * cell + s : zoom]  # (S, S, 3)
            assert np.array_equal(shown, view[row].permute(1, 2, 0).numpy())
    return views


def test_preview_of_digits_with_multicrop_writes_the_training_views(tmp_path, capsys):
    argv = [
        f"preview.out={tmp_path / 'p'}",
        "preview.images=5",
        "data.multicrop={sizes:[16],scales:[[0.1,0.5]]}",
        "method=adco",
        "data.augment.jitter_p=1.0",
    ]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "views.png" in out
    views = check_files(tmp_path / "p", [32, 32, 16], 5)
    assert not torch.equal(views[0], views[1])  # two random views of the same images
    # the views are denormalised images (not normalised floats cast to uint8): digits are dark on the whole
    assert 0 < views[0].float().mean() < 160 and views[0].max() > 200
    # seeded like training: the same command writes the same views, another seed others
    assert run([*argv, f"preview.out={tmp_path / 'q'}"], capsys)[0] == 0
    assert all(torch.equal(a, b) for a, b in zip(views, torch.load(tmp_path / "q" / "views.pt"), strict=True))
    assert run([*argv, f"preview.out={tmp_path / 'r'}", "seed=1"], capsys)[0] == 0
    assert not torch.equal(views[0], torch.load(tmp_path / "r" / "views.pt")[0])


def test_preview_of_a_fabricated_image_folder(data_root, tmp_path, capsys):
    argv = ["data=imagefolder", f"data.root={data_root / 'images'}", "data.image_size=32", "preview.images=4"]
    code, _, err = run([*argv, f"preview.out={tmp_path}"], capsys)
    assert code == 0, err
    views = check_files(tmp_path, [32, 32], 4)
    assert not torch.equal(views[0], views[1])  # two random views of each image


def test_preview_writes_to_preview_folder_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["preview.images=2"], capsys)
    assert code == 0, err
    check_files(tmp_path / "preview", [32, 32], 2)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["preview.images=0"], "error: preview.images must be an integer >= 1, got '0'"),
        (["preview.images=many"], "error: preview.images must be an integer >= 1, got 'many'"),
        (["preview.colour=red"], "error: unknown preview option 'preview.colour=red'"),
        (["data.bogus=1"], "error: bad override: Could not override 'data.bogus'"),
        (["data.augment.jitter_p=3"], "error: data.augment.jitter_p must be in [0, 1], got 3"),
        (["data.multicrop={sizes:[4],scales:[[0.1,0.5]]}"], "error: data.multicrop.sizes entries must be"),
        (["data=cifar10", "data.root=/nonexistent"], "error: data.root: cifar10 not found"),
        (["preview.images=5000"], "error: preview.images=5000 exceeds the 1437 training images of digits"),
    ],
)
def test_bad_options_are_one_line_errors(argv, message, tmp_path, capsys):
    code, _, err = run([*argv, f"preview.out={tmp_path}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith(message), err
    assert not (tmp_path / "views.pt").exists()


def test_the_module_runs_as_a_command():
    proc = subprocess.run(
        [sys.executable, "-m", "cssl.preview", "data=nope"],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown data 'nope'")
