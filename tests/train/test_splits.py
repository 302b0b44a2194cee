"""Which images train, choose and score a model: a dataset's own val/ and test/ folders, a stratified share held
out (whole groups where files belong together), and cross-validation's pool."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from medclf.train.data import DatasetError, ImageFolder, read_folder
from medclf.train.splits import (Splits, load_splits, pooled_for_folds, stratified_split, warn_formats_by_class,
                                 warn_missing_classes, warn_scarce_classes)

from .trees import make_tree


def test_validation_split_is_stratified_and_disjoint(blood_cells):
    folder = read_folder(blood_cells / "TRAIN")
    train, val = stratified_split(folder, 0.2, seed=0)
    assert not set(train.paths) & set(val.paths)
    assert len(train) + len(val) == len(folder)
    shares = np.bincount(val.labels) / len(val)
    assert np.allclose(shares, np.bincount(folder.labels) / len(folder), atol=0.01)


@pytest.mark.parametrize("counts", [[500, 2], [60, 60, 3], [23, 36, 5]])
def test_every_class_keeps_images_on_both_sides_however_rare(counts):
    labels = np.repeat(np.arange(len(counts)), counts)
    folder = ImageFolder(tuple(f"{i}.png" for i in range(len(labels))), labels, tuple("abc"[:len(counts)]))
    train, val = stratified_split(folder, 0.15, seed=0)
    assert (np.bincount(val.labels, minlength=len(counts)) >= 1).all()
    assert (np.bincount(train.labels, minlength=len(counts)) >= 1).all()
    assert not set(train.paths) & set(val.paths) and len(train) + len(val) == len(folder)


def test_a_class_whose_only_validation_file_is_unreadable_is_named_in_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="medclf.train.data"):
        assert warn_missing_classes(np.array([0, 0, 2]), ("a", "b", "c"), "validation") == ["b"]
        assert warn_missing_classes(np.array([0, 1, 2]), ("a", "b", "c"), "validation") == []
    assert [r.getMessage() for r in caplog.records] == ["validation holds no readable image of b: the model is not "
                                                        "checked on it there"]


def test_classes_that_each_come_in_formats_of_their_own_are_warned_of(caplog):
    """Every NORMAL a PNG, every PNEUMONIA a DICOM (two archives merged): a model can call by format; nothing was
    said. Formats shared by classes, or one format written two ways (.jpg, .JPEG), say nothing."""
    labels = np.array([0, 0, 1, 1])
    merged = ImageFolder(("n/1.png", "n/2.PNG", "p/1.dcm", "p/IM0002"), labels, ("NORMAL", "PNEUMONIA"))
    shared = ImageFolder(("n/1.png", "n/2.dcm", "p/1.dcm", "p/2.png"), labels, ("NORMAL", "PNEUMONIA"))
    spelt = ImageFolder(("n/1.jpg", "n/2.jpg", "p/1.JPEG", "p/2.jpeg"), labels, ("NORMAL", "PNEUMONIA"))
    with caplog.at_level(logging.WARNING, logger="medclf.train.splits"):
        assert warn_formats_by_class(merged) and not warn_formats_by_class(shared)
        assert not warn_formats_by_class(spelt)
    (record,) = caplog.records
    assert record.getMessage().startswith("each class's images come in file formats no other class's do (NORMAL: "
                                          ".png; PNEUMONIA: .dcm): a model can learn to tell the formats apart")


def test_classes_with_too_few_training_images_to_learn_from_are_named_in_one_warning(caplog):
    labels = np.repeat([0, 1, 2, 3], [40, 1, 9, 10])
    folder = ImageFolder(tuple(f"{i}.png" for i in range(len(labels))), labels, ("common", "stray", "rare", "enough"))
    with caplog.at_level(logging.WARNING, logger="medclf.train.splits"):
        assert warn_scarce_classes(folder) == ["stray", "rare"]
        plenty = np.repeat([0, 1], [10, 12])
        assert warn_scarce_classes(ImageFolder(tuple(f"{i}.png" for i in range(22)), plenty, ("a", "b"))) == []
    assert [r.getMessage() for r in caplog.records] == [
        "stray (1 training image), rare (9 training images): too few to learn classes from (tens a class are "
        "needed): the model will seldom call them and its scores there mean little; gather more images, or leave "
        "their folders out"]


def test_pre_split_layout_uses_its_own_val_and_test_folders(tmp_path, blood_cell_images):
    for split in ("train", "val", "test"):
        make_tree(tmp_path / split, {"cat": 2, "dog": 2}, blood_cell_images[0])
    splits = load_splits(tmp_path)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4, 4, 4)
    assert all("/val/" in p for p in splits.val.paths)


def test_cross_validation_pools_train_and_val_and_leaves_test_unseen(tmp_path, blood_cell_images, caplog):
    """``medclf crossval`` on a pre-split dataset folded ``train`` and ``test`` as two classes."""
    for split in ("train", "val", "test"):
        make_tree(tmp_path / split, {"cat": 2, "dog": 3}, blood_cell_images[0])
    with caplog.at_level(logging.WARNING):
        pooled = pooled_for_folds(tmp_path)
    assert pooled.classes == ("cat", "dog") and len(pooled) == 10
    assert all("/test/" not in path for path in pooled.paths)
    assert caplog.messages == [f"{tmp_path / 'test'}: left out of the folds, so that it stays unseen (score the fold "
                               "models on it with medclf evaluate)"]
    make_tree(tmp_path / "flat", {"cat": 2, "dog": 2, "test": 2}, blood_cell_images[0])
    with pytest.raises(DatasetError, match="test looks like a split"):
        pooled_for_folds(tmp_path / "flat")


def test_a_test_folder_of_loose_unlabelled_images_is_said_and_not_scored(tmp_path, blood_cell_images, caplog):
    """Competitions ship their test images loose, without labels: training used to end, after its whole
    budget, in "none of the 0 images could be read". A folder the user names with --test is refused at once."""
    make_tree(tmp_path / "train", {"cat": 3, "dog": 3}, blood_cell_images[0])
    make_tree(tmp_path, {"test": 2}, blood_cell_images[0])
    with caplog.at_level(logging.WARNING):
        assert load_splits(tmp_path).test is None
    assert caplog.messages == [f"{tmp_path / 'test'}: no image in class folders named as the training classes (cat, "
                               "dog); it holds 2 .jpeg files: unlabelled, so not a test set (classify its images with "
                               "medclf-run)"]
    with pytest.raises(DatasetError, match=r"test: no image in class folders named as the training classes"):
        load_splits(tmp_path / "train", test=tmp_path / "test")
    (tmp_path / "test").rename(tmp_path / "val")  # a loose val/: a split is held out instead
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert len(load_splits(tmp_path).val) == 2
    assert caplog.messages == [f"{tmp_path / 'val'}: no image in class folders named as the training classes (cat, "
                               "dog); it holds 2 .jpeg files: unlabelled, so 15% of the training images are held out "
                               "instead"]


def test_a_split_holding_a_folder_of_images_that_is_no_class_is_read_as_unlabelled(tmp_path, blood_cell_images,
                                                                                     caplog):
    """C-NMC's ``validation_data/`` holds ``C-NMC_test_prelim_phase_data/*.bmp`` beside the sheet labelling them:
    not a folder of a training class, so not an error about unknown classes — unlabelled, as loose images are."""
    make_tree(tmp_path / "training_data", {"all": 3, "hem": 3}, blood_cell_images[0])
    make_tree(tmp_path / "validation_data", {"C-NMC_test_prelim_phase_data": 2}, blood_cell_images[0])
    make_tree(tmp_path / "testing_data", {"C-NMC_test_final_phase_data": 2}, blood_cell_images[0])
    with caplog.at_level(logging.WARNING):
        splits = load_splits(tmp_path, val_split=0.4)
    assert splits.test is None and len(splits.val) == 2
    assert [message.split(":")[-1] for message in caplog.messages] == [
        " unlabelled, so 40% of the training images are held out instead",
        " unlabelled, so not a test set (classify its images with medclf-run)"]
    with pytest.raises(DatasetError, match=r"classes \['C-NMC_test_final_phase_data'\] are not among the training"):
        load_splits(tmp_path, test=tmp_path / "testing_data")  # named by the user: said as it is
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert len(pooled_for_folds(tmp_path)) == 6  # cross-validation folds the training images alone
    assert caplog.messages[0].endswith(" unlabelled, so not folded")


def test_a_run_opens_by_saying_in_one_line_what_it_learns_from(tmp_path, blood_cell_images):
    for split, counts in (("train", {"cat": 3, "dog": 2}), ("val", {"cat": 1, "dog": 1}), ("test", {"cat": 1})):
        make_tree(tmp_path / split, counts, blood_cell_images[0])
    assert load_splits(tmp_path).summary() == ("2 classes (cat 3, dog 2): 5 training images, 2 validation "
                                               "(val/ folder), 1 test")
    labels = np.repeat(np.arange(10), [4, 2] + [3] * 8)  # past eight classes, their range rather than each
    many = ImageFolder(tuple(f"{i}.png" for i in range(30)), labels, tuple(f"c{i}" for i in range(10)))
    assert Splits(many, many.subset(np.arange(4)), held_out="15% of the images at random").summary() == (
        "10 classes (2-4 training images each): 30 training images, 4 validation (15% of the images at random)")


def test_a_test_folder_beside_the_class_folders_is_not_taken_for_a_class(tmp_path, blood_cell_images):
    make_tree(tmp_path, {"cat": 2, "dog": 2, "test/cat": 1, "test/dog": 1}, blood_cell_images[0])
    with pytest.raises(DatasetError, match=r"test looks like a split, not a class: .*--test .*where it is a class "
                                           r".* pass --top-folders"):
        load_splits(tmp_path)
    splits = load_splits(tmp_path, val_split=0.5, test=tmp_path / "test")  # as the refusal says (it refused again)
    assert splits.train.classes == ("cat", "dog") and len(splits.train) + len(splits.val) == 4
    assert len(splits.test) == 2


def test_test_folder_with_an_unknown_class_is_refused(tmp_path, blood_cell_images):
    make_tree(tmp_path / "train", {"cat": 2, "dog": 2}, blood_cell_images[0])
    make_tree(tmp_path / "test", {"cat": 1, "bird": 1}, blood_cell_images[0])
    with pytest.raises(DatasetError, match="bird"):
        load_splits(tmp_path)
    with pytest.raises(DatasetError, match=r"test is a split: point at it"):  # the whole dataset, not its test/
        read_folder(tmp_path, ("cat", "dog"))


def test_a_test_folder_whose_class_names_differ_only_in_case_is_read_as_the_training_classes(tmp_path,
                                                                                             blood_cell_images):
    make_tree(tmp_path / "train", {"NORMAL": 2, "PNEUMONIA": 2}, blood_cell_images[0])
    make_tree(tmp_path / "test", {"normal": 1, "Pneumonia": 2}, blood_cell_images[0])
    test = load_splits(tmp_path).test
    assert test.classes == ("NORMAL", "PNEUMONIA") and test.class_counts() == {"NORMAL": 1, "PNEUMONIA": 2}


def test_a_case_only_match_is_not_guessed_when_two_training_classes_share_it(tmp_path, blood_cell_images):
    make_tree(tmp_path / "train", {"Normal": 2, "NORMAL": 2}, blood_cell_images[0])
    make_tree(tmp_path / "test", {"normal": 1}, blood_cell_images[0])
    with pytest.raises(DatasetError, match="normal"):
        load_splits(tmp_path)


def test_a_test_folder_named_by_the_start_of_a_training_class_is_read_as_it(tmp_path, blood_cell_images, caplog):
    """The Kaggle chest CT set's train/ has ``adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib``, its test/
    ``adenocarcinoma``; a start shared by two training classes is not guessed."""
    make_tree(tmp_path / "train", {"adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib": 2, "normal": 2},
              blood_cell_images[0])
    make_tree(tmp_path / "test", {"adenocarcinoma": 1, "normal": 1}, blood_cell_images[0])
    with caplog.at_level("WARNING"):
        test = load_splits(tmp_path).test
    assert test.class_counts() == {"adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib": 1, "normal": 1}
    assert [r.getMessage() for r in caplog.records if "read as" in r.getMessage()] == [
        f"{tmp_path / 'test' / 'adenocarcinoma'}: read as class adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib, the one "
        "training class whose name begins like it"]
    with pytest.raises(DatasetError, match="carcinoma"):
        read_folder(tmp_path / "test", ("carcinoma_a", "carcinoma_b", "normal"))
    with pytest.raises(DatasetError, match="adenocarcinoma"):  # a start is a whole word, not a few letters
        read_folder(tmp_path / "test", ("adeno", "normal"))


def test_a_rare_class_of_few_groups_is_trained_on_always_and_validated_on_when_it_can_be():
    """A common class of many sources beside rare ones of one to five (patients, cells): StratifiedGroupKFold
    alone left a class of several groups out of validation in two datasets of three like these."""
    rng = np.random.default_rng(0)
    for dataset in range(60):
        labels, groups = [], []
        for label in range(int(rng.integers(2, 5))):
            for group in range(int(rng.integers(20, 60) if label == 0 else rng.integers(1, 6))):
                size = int(rng.integers(2, 40))
                labels += [label] * size
                groups += [f"{label}-{group}"] * size
        labels, groups = np.array(labels), np.array(groups)
        folder = ImageFolder(tuple(f"{i}.png" for i in range(len(labels))), labels, tuple("abcd"[:labels.max() + 1]))
        train, val = stratified_split(folder, 0.15, 0, groups)
        held = np.isin(folder.paths, val.paths)
        assert not set(groups[held]) & set(groups[~held]), dataset
        for label in np.unique(labels):
            assert (labels[~held] == label).any(), dataset  # every class is learnt
            several = len(set(groups[labels == label])) > 1
            assert (labels[held] == label).any() == several, dataset  # and checked, unless it is one group
        assert 0.05 < held.mean() < 0.4, dataset


def test_a_val_folder_too_small_to_judge_by_joins_training_and_a_split_is_held_out(tmp_path, blood_cell_images,
                                                                                   caplog):
    # Kermany's chest X-rays ship val/ with 8 images per class: early stopping and a threshold chosen on them
    # would be noise.
    make_tree(tmp_path / "train", {"NORMAL": 60, "PNEUMONIA": 180}, blood_cell_images[0])
    make_tree(tmp_path / "val", {"NORMAL": 8, "PNEUMONIA": 8}, blood_cell_images[0])
    splits = load_splits(tmp_path, val_split=0.15)
    assert len(splits.train) + len(splits.val) == 256
    assert splits.val.class_counts() == {"NORMAL": 10, "PNEUMONIA": 28}
    assert "too few to choose a model" in caplog.text and "8 NORMAL, 8 PNEUMONIA" in caplog.text


def test_a_val_folder_missing_a_class_joins_training(tmp_path, blood_cell_images):
    make_tree(tmp_path / "train", {"cat": 40, "dog": 40}, blood_cell_images[0])
    make_tree(tmp_path / "val", {"cat": 30}, blood_cell_images[0])
    splits = load_splits(tmp_path, val_split=0.25)
    assert splits.val.class_counts() == {"cat": 18, "dog": 10}
