"""Label subsets (cssl/eval/subsets.py): stratified, deterministic per seed, SimCLR's list format, one-line
errors; and linear_eval.py training on the subset it writes to the run dir."""

import json

import pytest
import torch

from cssl.core.errors import ConfigError
from cssl.eval.subsets import LabelSubset, SubsetWithSamples, read_subset_file, stratified
from tests.conftest import QUICK, compose, run_inprocess, train_inprocess

LABELS = torch.tensor([c for c in range(5) for _ in range(40 + 10 * c)])  # classes of 40, 50, ..., 80 images


def test_fraction_is_stratified_per_class():
    chosen = stratified(LABELS, seed=0, fraction=0.1)
    counts = torch.bincount(LABELS[chosen], minlength=5).tolist()
    assert counts == [round(0.1 * n) for n in (40, 50, 60, 70, 80)]
    assert chosen.tolist() == sorted(set(chosen.tolist()))  # sorted, no repeats


def test_tiny_fraction_keeps_one_image_per_class():
    assert torch.bincount(LABELS[stratified(LABELS, seed=0, fraction=0.001)]).tolist() == [1] * 5


def test_labels_per_class_and_unlabelled_never_chosen():
    labels = torch.cat([LABELS, torch.full((30,), -1)])
    chosen = stratified(labels, seed=3, per_class=7)
    assert torch.bincount(labels[chosen]).tolist() == [7] * 5 and (labels[chosen] >= 0).all()


def test_same_seed_same_subset_other_seed_another():
    a = stratified(LABELS, seed=0, fraction=0.2)
    assert torch.equal(a, stratified(LABELS.clone(), seed=0, fraction=0.2))
    torch.manual_seed(123)  # the global random state plays no part
    assert torch.equal(a, stratified(LABELS, seed=0, fraction=0.2))
    assert not torch.equal(a, stratified(LABELS, seed=1, fraction=0.2))


def test_subset_independent_of_other_config(tmp_path):
    """The same seed and fraction choose the same images whatever the optimiser or epochs: the subset is a
    function of (labels, seed, fraction) only."""
    from cssl.evaluate import label_subset

    one = compose("linear_eval", ["data=lab", "data.label_fraction=0.05", "optimizer.lr=0.5"])
    two = compose("linear_eval", ["data=lab", "data.label_fraction=0.05", "trainer.max_epochs=3", "mode=finetune"])
    assert label_subset(one) == label_subset(two) and label_subset(one).tag == "frac0.05"


def test_official_list_format_is_parsed(tmp_path):
    names = ["n01440764_10026.JPEG", "n01440764_10027.JPEG", "n01443537_2.JPEG", "n01443537_99.JPEG"]
    listing = tmp_path / "1percent.txt"
    listing.write_text("n01443537_99.JPEG\nn01440764_10026.JPEG\n\n")  # as imagenet_subsets/1percent.txt
    assert read_subset_file(listing, names, len(names)).tolist() == [0, 3]
    listing.write_text("n01443537_99.JPEG\nn09999999_1.JPEG\nn09999999_2.JPEG\n")
    with pytest.raises(ConfigError, match=r"2 of 3 file names .* first: n09999999_1.JPEG, n09999999_2.JPEG"):
        read_subset_file(listing, names, len(names))


def test_index_lists_for_in_memory_data(tmp_path):
    listing = tmp_path / "subset.txt"
    listing.write_text("# chosen\n5\n2\n5\n")
    assert read_subset_file(listing, None, 10).tolist() == [2, 5]
    listing.write_text("3\n12\n")
    with pytest.raises(ConfigError, match=r"1 of 2 lines .* in \[0, 10\)"):
        read_subset_file(listing, None, 10)


def test_subset_keeps_folder_samples():
    class Folder(torch.utils.data.Dataset):
        samples = [("a/x.jpg", 0), ("b/y.jpg", 1), ("b/z.jpg", 1)]

        def __len__(self):
            return 3

    assert SubsetWithSamples(Folder(), [2, 0]).samples == [("b/z.jpg", 1), ("a/x.jpg", 0)]


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"fraction": 0.0}, "label_fraction must be in (0, 1]"),
        ({"fraction": 1.5}, "label_fraction must be in (0, 1]"),
        ({"per_class": 0}, "labels_per_class must be an integer >= 1"),
        ({"fraction": 0.1, "per_class": 3}, "at most one of"),
    ],
)
def test_bad_subset_options_are_one_line_errors(kwargs, word):
    with pytest.raises(ConfigError, match=word.replace("(", r"\(").replace("]", r"\]")):
        LabelSubset(**kwargs)


def test_more_per_class_than_exist_is_one_line():
    with pytest.raises(ConfigError, match=r"class 0 has only 40 labelled images; .*at most 40"):
        stratified(LABELS, seed=0, per_class=45)


@pytest.fixture(scope="module")
def lab_checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("pretrain_lab")
    train_inprocess(*QUICK, "data=lab", "trainer.max_steps=1", f"run_dir={run}")
    return run


FAST = ("logger=none", "trainer.progress_bar=false", "trainer.max_epochs=1", "data.batch_size=10")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["linear", "finetune"])
def test_evaluation_trains_on_the_subset_and_writes_it(mode, lab_checkpoint, tmp_path):
    code, err = run_inprocess(
        "linear_eval",
        [f"ckpt={lab_checkpoint}", "data=lab", f"mode={mode}", "data.labels_per_class=2", *FAST, f"run_dir={tmp_path}"],
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["subset"]["images"] == 20 and summary["subset"]["tag"] == "per2" and summary["mode"] == mode
    written = [int(line) for line in (tmp_path / "label_subset.txt").read_text().split()]
    assert len(written) == 20 and summary["subset"]["file"] == str(tmp_path / "label_subset.txt")
    # the written list repeats the subset
    again = tmp_path / "again"
    code, err = run_inprocess(
        "linear_eval",
        [f"ckpt={lab_checkpoint}", "data=lab", f"data.label_subset={tmp_path / 'label_subset.txt'}", *FAST,
         f"run_dir={again}"],
    )  # fmt: skip
    assert code == 0, err
    assert [int(x) for x in (again / "label_subset.txt").read_text().split()] == written


@pytest.mark.slow
def test_missing_list_entries_fail_before_training(lab_checkpoint, tmp_path):
    listing = tmp_path / "bad.txt"
    listing.write_text("1\n999999\n")
    code, err = run_inprocess(
        "linear_eval",
        [f"ckpt={lab_checkpoint}", "data=lab", f"data.label_subset={listing}", *FAST, f"run_dir={tmp_path}"],
    )
    assert code == 2 and "data.label_subset: 1 of 2 lines" in err and len(err.strip().splitlines()) == 1


def test_label_keys_exist_only_for_linear_eval():
    assert "label_fraction" not in compose("train", []).data
    assert compose("linear_eval", ["data=cifar10"]).data.label_fraction is None
