"""Streaming shards: ``python -m cssl.shard`` (round trip, labels, manifest, errors, an interrupted conversion
resumed) and ``data=shards`` (views from the original bytes, seeded per record, bad records skipped and
counted, exact mid-epoch resume of LitData's loader, a local folder standing in as an object store).

Conversions start LitData's writer processes (~10 s each): those tests are slow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from cssl.core.errors import ConfigError
from cssl.data import build_datamodule, folder
from cssl.data.plan import ViewPlan
from cssl.data.shards import held_out, loader_state
from cssl.shard import main as shard_main
from cssl.shard import shard
from tests.conftest import REPO

CLASSES = ("ant", "bee", "cat")
PER_CLASS = 8
BAD = "bee/zz_broken.jpg"  # a file with an image's name and no image inside


def fabricate(root: Path, *, bad: bool = False, classes: tuple[str, ...] = CLASSES, per_class: int = PER_CLASS) -> Path:
    """JPEGs and a PNG of several sizes in one folder per class, plus a README the listing skips."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(40 + 3 * i, 56 - 2 * c, 3), dtype=np.uint8)
            ext = "png" if i == 0 else "jpg"
            Image.fromarray(pixels).save(root / name / f"{i:02d}.{ext}")
    (root / "README.txt").write_text("not an image")
    if bad:
        (root / BAD).write_bytes(b"\xff\xd8\xff not a jpeg at all" * 10)
    return root


def records(out: Path) -> list[dict]:
    from litdata import StreamingDataset

    dataset = StreamingDataset(str(out))
    return [{**dataset[i], "image": bytes(dataset[i]["image"])} for i in range(len(dataset))]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("shards")
    src = fabricate(root / "src", bad=True)
    out = root / "out"
    manifest = shard(str(src), str(out), labels="folders", chunk_bytes="12kb", workers=2)
    recs = records(out)
    (bad,) = [r["id"] for r in recs if b"not a jpeg" in r["image"]]
    return {"src": src, "out": out, "manifest": manifest, "records": recs, "bad": bad}


def check_once_each(ids: list[int], converted: dict, batch_size: int = 4) -> None:
    """An epoch: N // batch * batch items (drop_last), no record twice but the one after the bad record
    (its replacement, as the folder path replaces a bad file by the next one)."""
    n = len(converted["records"])
    assert len(ids) == n // batch_size * batch_size
    assert {i for i in ids if ids.count(i) > 1} <= {(converted["bad"] + 1) % n}


plan = ViewPlan(augment={"crop_scale": [0.2, 1.0]})


def module(root: Path | str, **kwargs) -> object:
    options = {"batch_size": 4, "num_workers": 0, "image_size": 24, "views": plan, **kwargs}
    data = build_datamodule("shards", root=str(root), **options)
    data.check()
    data.trainer = SimpleNamespace(training=True, world_size=1, global_rank=0)
    return data


def epoch_items(loader) -> list[tuple[list[int], list[torch.Tensor], torch.Tensor]]:
    """(sample ids, views, skipped) of each batch of one pass."""
    loader.dataset.with_ids = True
    return [(ids.tolist(), views, skipped) for views, _, skipped, ids in loader]


# -- conversion -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_round_trip_keeps_the_original_bytes_labels_and_ids(converted: dict) -> None:
    src, recs = converted["src"], converted["records"]
    files = sorted(p for p in src.rglob("*") if p.suffix in (".jpg", ".png"))
    assert len(recs) == len(files) == len(CLASSES) * PER_CLASS + 1
    assert [r["id"] for r in recs] == list(range(len(recs)))  # the id is the record's index
    by_bytes = {p.read_bytes(): CLASSES.index(p.parent.name) for p in files}
    assert len(by_bytes) == len(files)
    for r in recs:
        assert r["image"] in by_bytes and r["label"] == by_bytes[r["image"]]  # bytes identical, label kept
    assert {r["image"] for r in recs} == set(by_bytes)  # every file once
    assert [r["label"] for r in recs] != sorted(r["label"] for r in recs)  # written in a shuffled order


@pytest.mark.slow
def test_manifest_says_what_the_shards_hold(converted: dict) -> None:
    manifest = json.loads((converted["out"] / "manifest.json").read_text())
    assert manifest == converted["manifest"]
    assert manifest["format"] == "cssl-shards" and manifest["version"] == 1 and manifest["complete"] is True
    assert manifest["count"] == len(converted["records"]) and manifest["classes"] == list(CLASSES)
    assert manifest["source"] == str(converted["src"]) and manifest["skipped_in_listing"] == {"not an image": 1}
    assert manifest["labels"] == [r["label"] for r in converted["records"]]
    chunks = sorted(converted["out"].glob("chunk-*.bin"))
    assert len(chunks) > 2 and manifest["bytes"] == sum(p.stat().st_size for p in chunks)


@pytest.mark.slow
def test_a_finished_conversion_is_not_redone(converted: dict, capsys) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in converted["out"].iterdir()}
    assert (
        shard_main(
            [
                str(converted["src"]),
                str(converted["out"]),
                "--labels",
                "folders",
                "--chunk-bytes",
                "12kb",
                "--workers",
                "2",
            ]
        )
        == 0
    )
    assert "nothing to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in converted["out"].iterdir()} == before


@pytest.mark.slow
def test_a_conversion_killed_after_the_index_only_finishes_its_manifest(converted: dict) -> None:
    path = converted["out"] / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "complete": False}))
    chunks = {p.name: p.stat().st_mtime_ns for p in converted["out"].glob("chunk-*.bin")}
    manifest = shard(str(converted["src"]), str(converted["out"]), labels="folders", chunk_bytes="12kb", workers=2)
    assert manifest == converted["manifest"] and json.loads(path.read_text())["complete"] is True
    assert {p.name: p.stat().st_mtime_ns for p in converted["out"].glob("chunk-*.bin")} == chunks


def test_bad_source_and_foreign_output_are_one_line_errors(tmp_path: Path, capsys) -> None:
    assert shard_main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: shard: SRC") and err.count("\n") == 1
    src = fabricate(tmp_path / "src", per_class=2)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert shard_main([str(src), str(foreign)]) == 2
    err = capsys.readouterr().err
    assert "is not empty and holds no cssl shards" in err and err.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert shard_main([str(empty), str(tmp_path / "out")]) == 2
    assert "no images" in capsys.readouterr().err


@pytest.mark.slow
def test_other_options_into_the_same_output_are_refused(converted: dict) -> None:
    with pytest.raises(ConfigError, match="another conversion .*labels"):
        shard(str(converted["src"]), str(converted["out"]), labels="none", chunk_bytes="12kb", workers=2)


SLOW_RECORD = """
import time
import cssl.shard

class SlowRecord(cssl.shard.ReadRecord):  # LitData's spawned writer imports it from here
    def __call__(self, index):
        time.sleep(0.15)
        return super().__call__(index)
"""
SLOW_WRITER = """
import sys
import cssl.shard
from slow_record import SlowRecord

if __name__ == "__main__":
    cssl.shard.ReadRecord = SlowRecord
    cssl.shard.shard(sys.argv[1], sys.argv[2], labels="folders", chunk_bytes="4kb", workers=1)
"""


@pytest.mark.slow
def test_an_interrupted_conversion_is_finished_by_a_rerun_without_duplicates(tmp_path: Path, capsys) -> None:
    src = fabricate(tmp_path / "src", classes=("a", "b"), per_class=40)
    out = tmp_path / "out"
    (tmp_path / "slow_record.py").write_text(SLOW_RECORD)
    (tmp_path / "slow.py").write_text(SLOW_WRITER)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"}
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "slow.py"), str(src), str(out)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    checkpoint = out / ".checkpoints" / "checkpoint-0.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.is_file() and len(json.loads(checkpoint.read_text())["chunks"]) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, (tmp_path / "slow.log").read_text()[-2000:]
    os.killpg(proc.pid, 9)
    proc.wait()
    assert not (out / "index.json").exists()
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    done = len(json.loads(checkpoint.read_text())["chunks"])

    shard(str(src), str(out), labels="folders", chunk_bytes="4kb", workers=1)
    printed = capsys.readouterr().out
    assert "resuming" in printed and "Checkpoints loaded successfully" in printed
    recs = records(out)
    assert [r["id"] for r in recs] == list(range(80))  # all, once each, in order
    files = {p.read_bytes() for p in src.rglob("*.*g")}
    assert {r["image"] for r in recs} == files
    assert len(json.loads((out / "index.json").read_text())["chunks"]) > done


# -- data=shards -----------------------------------------------------------------------------------------
def test_held_out_is_seeded_disjoint_and_complete() -> None:
    train, val = held_out(100, 0.1)
    assert len(val) == 10 and sorted(train + val) == list(range(100)) and held_out(100, 0.1) == (train, val)
    assert held_out(5, 0.01)[1] and held_out(5, 0.0) == (list(range(5)), [])
    with pytest.raises(ConfigError, match="val_fraction"):
        held_out(5, 1.0)


def test_a_folder_without_shards_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no shards at .*python -m cssl.shard"):
        module(tmp_path)


@pytest.mark.slow
def test_training_views_come_from_the_records_with_per_record_seeds(converted: dict) -> None:
    data = module(converted["out"], eval_root=str(converted["out"]))
    assert data.num_classes == len(CLASSES) and len(data.sets["labelled"]) == len(converted["records"])
    straight = epoch_items(data.train_dataloader())
    check_once_each([i for batch, _, _ in straight for i in batch], converted)
    views = {i: [v[row] for v in batch_views] for batch, batch_views, _ in straight for row, i in enumerate(batch)}
    assert all(v.shape == (3, 24, 24) and v.dtype == torch.uint8 for vs in views.values() for v in vs)
    # two workers read other records in another order; each record's views are the same (seeded by its id)
    other = module(converted["out"], eval_root=str(converted["out"]), num_workers=2)
    for batch, batch_views, _ in epoch_items(other.train_dataloader()):
        for row, i in enumerate(batch):
            if i in views:
                assert all(torch.equal(a[row], b) for a, b in zip(batch_views, views[i], strict=True))


@pytest.mark.slow
def test_a_bad_record_is_replaced_and_counted(converted: dict) -> None:
    bad, n = converted["bad"], len(converted["records"])
    assert n % 5 == 0  # batches of 5 leave no remainder: the bad record is drawn
    data = module(converted["out"], eval_root=str(converted["out"]), batch_size=5)
    folder._warned.clear()  # named once per process: earlier tests may have named it
    with pytest.warns(UserWarning, match=f"#{bad} "):
        batches = epoch_items(data.train_dataloader())
    seen = [i for ids, _, _ in batches for i in ids]
    assert len(seen) == n and bad not in seen and seen.count((bad + 1) % n) == 2  # replaced by the next record
    assert sum(int(s.sum()) for _, _, s in batches) == 1  # and counted once (data/skipped_images)
    strict = module(converted["out"], eval_root=str(converted["out"]), batch_size=5, skip_bad_images=False)
    with pytest.raises(Exception, match="skip_bad_images=false"):
        epoch_items(strict.train_dataloader())


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_mid_epoch_resume_continues_with_the_next_batch(converted: dict, workers: int) -> None:
    data = module(converted["out"], eval_root=str(converted["out"]), num_workers=workers, seed=5)
    straight = epoch_items(data.train_dataloader())
    for done in (1, 3):
        state = {"epoch": 0, "batches": done, "processes": 1}
        state["loader"] = loader_state(data.train_loader, **state)
        resumed = module(converted["out"], eval_root=str(converted["out"]), num_workers=workers, seed=5)
        resumed.load_state_dict(state)
        rest = epoch_items(resumed.train_dataloader())
        assert [ids for ids, _, _ in rest] == [ids for ids, _, _ in straight[done:]]
        for (_, a, _), (_, b, _) in zip(rest, straight[done:], strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))  # the same views too
    # a resume at an epoch boundary starts that epoch's own order (not the first epoch's again)
    second = epoch_items(data.train_loader)  # the same loader's second pass
    at_boundary = module(converted["out"], eval_root=str(converted["out"]), num_workers=workers, seed=5)
    at_boundary.load_state_dict({"epoch": 1, "batches": 0, "processes": 1})
    assert [ids for ids, _, _ in epoch_items(at_boundary.train_dataloader())] == [ids for ids, _, _ in second]
    assert [ids for ids, _, _ in second] != [ids for ids, _, _ in straight]


@pytest.mark.slow
def test_held_out_records_are_never_trained_on(converted: dict) -> None:
    data = module(converted["out"], val_fraction=0.25)
    held = set(data.sets["val"].indices)
    assert len(held) == round(len(converted["records"]) * 0.25)
    seen = {i for ids, _, _ in epoch_items(data.train_dataloader()) for i in ids}
    assert seen and not seen & held
    image, label = data.sets["val"][0]
    assert image.shape == (3, data.load_size, data.load_size) and 0 <= label < len(CLASSES)


@pytest.mark.slow
def test_a_local_folder_standing_in_as_an_object_store(converted: dict, tmp_path: Path) -> None:
    remote, cache = tmp_path / "bucket", tmp_path / "cache"
    shutil.copytree(converted["out"], remote)
    url = f"local:{remote}"
    data = module(url, eval_root=url, cache_dir=str(cache))
    assert data.num_classes == len(CLASSES) and (cache / "manifest.json").is_file()
    check_once_each([i for batch, _, _ in epoch_items(data.train_dataloader()) for i in batch], converted)
    assert any(cache.rglob("chunk-*.bin")) or any(cache.rglob("*.bin"))  # chunks came through the cache
    image, _ = data.sets["val"][3]
    assert image.dtype == torch.uint8


@pytest.mark.slow
def test_device_decoding_gets_the_bytes_and_boxes(converted: dict) -> None:
    """data.decode=gpu: workers send the record's bytes and boxes; the decoder (here on the CPU) cuts the views."""
    data = module(converted["out"], eval_root=str(converted["out"]), decode="gpu", batch_size=5)
    payload, labels, skipped = next(iter(data.train_dataloader()))
    assert isinstance(payload["data"][0], bytes) and payload["boxes"].shape == (5, 2, 4)
    assert all(p.startswith(str(converted["out"]) + "#") for p in payload["path"])
    views, y = data.on_after_batch_transfer((payload, labels, skipped), 0)
    assert [tuple(v.shape) for v in views] == [(5, 3, 24, 24)] * 2 and torch.equal(y, labels)
