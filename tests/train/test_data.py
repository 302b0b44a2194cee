"""Folder-per-class datasets: what counts as a class, how splits are made, and the decode-once cache."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from medclf.runtime.preprocess import Preprocess, load_image
from medclf.train.data import (
    DatasetError, ImageFolder, load_arrays, load_splits, pooled_for_folds, predict_folder, read_folder,
    Splits, read_named, stratified_split, warn_missing_classes)
from medclf.train.labellers import NameLabels

from .trees import make_tree


def test_classes_are_sorted_folder_names_and_hidden_things_are_ignored(tmp_path, blood_cell_images):
    make_tree(tmp_path, {"b": 2, "a": 3, ".cache": 2, "empty": 0}, blood_cell_images[0])
    (tmp_path / "a" / ".DS_Store").write_text("x")
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "__MACOSX" / "a").mkdir(parents=True)  # what unzipping a macOS archive leaves beside the classes
    (tmp_path / "__MACOSX" / "a" / "._img0.jpeg").write_bytes(b"\x00\x05\x16\x07")
    folder = read_folder(tmp_path)
    assert folder.classes == ("a", "b")
    assert folder.class_counts() == {"a": 3, "b": 2}


def test_what_medclf_wrote_inside_a_dataset_is_not_read_as_its_images(tmp_path, blood_cell_images, caplog):
    """``medclf train data --out data/run`` puts a run's pictures (roc.png, curves.png) in the dataset: the next
    run must not learn them, as a class ``run`` or as loose images labelled by their names."""
    make_tree(tmp_path / "classes", {"cat": 2, "dog": 2}, blood_cell_images[0])
    for run in (tmp_path / "classes" / "run", tmp_path / "classes" / "cat" / "run", tmp_path / "loose" / "run"):
        make_tree(run, {"evaluation-test": 1}, blood_cell_images[0])
        shutil.copy(blood_cell_images[1], run / "roc.png")
        (run / "preprocess.json").write_text("{}")
        (run / "evaluation-test" / "metrics.json").write_text("{}")
    for k in range(4):
        shutil.copy(blood_cell_images[k], tmp_path / "loose" / f"{('cat', 'dog')[k % 2]}.{k}.png")
    with caplog.at_level(logging.WARNING):
        assert read_folder(tmp_path / "classes").class_counts() == {"cat": 2, "dog": 2}
        assert read_named(tmp_path / "loose", NameLabels(".")).class_counts() == {"cat": 2, "dog": 2}
    assert caplog.messages == [
        f"{tmp_path / 'classes' / 'run'}: written by medclf (a run, an evaluation), not a class: left out",
        f"{tmp_path / 'classes'}: 2 images in folders medclf wrote (cat/run) left out: a run's pictures are not data",
        f"{tmp_path / 'loose'}: 2 images in folders medclf wrote (run) left out: a run's pictures are not data"]


def test_a_class_folder_without_images_is_named_in_a_warning(tmp_path, blood_cell_images, caplog):
    """A class whose photos are all in a format medclf does not read (a phone's HEIC) must not vanish unsaid."""
    make_tree(tmp_path, {"a": 2, "b": 2, "c": 0}, blood_cell_images[0])
    for i in range(3):
        (tmp_path / "c" / f"IMG_{i}.heic").write_bytes(b"x")
    with caplog.at_level("WARNING"):
        assert read_folder(tmp_path).classes == ("a", "b")
    assert [r.getMessage() for r in caplog.records] == [f"{tmp_path / 'c'}: no image in it (it holds 3 .heic "
                                                        "files), so it is not a class"]
    caplog.clear()
    with caplog.at_level("WARNING"):  # a test folder of known classes: c is one, only without test images
        assert read_folder(tmp_path, ("a", "b", "c")).class_counts() == {"a": 2, "b": 2, "c": 0}
    assert not caplog.records


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
    with pytest.raises(DatasetError, match=r"test looks like a split, not a class: .*--test"):
        load_splits(tmp_path)


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


def test_arrays_are_the_runtime_preprocessing_exactly_and_cached(tmp_path, blood_cells):
    folder = read_folder(blood_cells / "TEST").subset(np.arange(0, 2400, 300))
    spec = Preprocess(96, 128)
    images, labels, kept = load_arrays(folder, spec, cache_dir=tmp_path)
    assert images.dtype == np.uint8 and images.shape == (8, 96, 128, 3)
    for path, image in zip(kept.paths, images):  # training sees exactly what the runtime serves
        assert np.array_equal(image, load_image(path, spec))
    cached, cached_labels, _ = load_arrays(folder, spec, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("images-*.npz"))) == 1
    assert np.array_equal(cached, images) and np.array_equal(cached_labels, labels)


def test_a_cache_made_by_other_decoders_is_not_read(tmp_path, blood_cells, monkeypatch):
    """Damaged JPEGs decoded with grey fill before are refused now: their old arrays must not come back."""
    import medclf.train.data as data

    folder, spec = read_folder(blood_cells / "TEST").subset(np.arange(0, 2400, 600)), Preprocess(32, 32)
    load_arrays(folder, spec, cache_dir=tmp_path)
    monkeypatch.setattr(data, "DECODING_VERSION", data.DECODING_VERSION + 1)
    load_arrays(folder, spec, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("images-*.npz"))) == 2


def test_file_and_class_names_in_any_encoding_train_and_cache(tmp_path, blood_cell_images):
    """A Latin-1 file name (not UTF-8) and non-ASCII class names: decoded, cached and read back like any other
    (the cache key's encoding raised on the Latin-1 name and stopped training)."""
    root = tmp_path / "data"
    for image, name in zip(blood_cell_images[::2], ("Éosinophile", "Lymphocyte ✓", "Monocyte", "Neutrophile")):
        (root / name).mkdir(parents=True)
        shutil.copy(image, os.fsencode(root / name) + b"/cellule_\xe9.jpeg")
        shutil.copy(image, root / name / "b.jpeg")
    folder = read_folder(root)
    assert folder.classes == ("Lymphocyte ✓", "Monocyte", "Neutrophile", "Éosinophile")
    spec = Preprocess(32, 32)
    images, labels, kept = load_arrays(folder, spec, cache_dir=tmp_path / "cache")
    assert len(kept) == 8 and np.array_equal(load_arrays(folder, spec, cache_dir=tmp_path / "cache")[0], images)


def test_the_decoded_image_cache_never_costs_a_run_its_work(tmp_path, blood_cell_images, caplog):
    """A broken link among the files (it stopped training while the cache key was made), a cache folder that
    cannot be made (a full disk alike) and a damaged cache file: each is said, and the arrays come back."""
    root = tmp_path / "data"
    make_tree(root, {"A": 3, "B": 3}, blood_cell_images[0])
    (root / "A" / "gone.jpeg").symlink_to(tmp_path / "nowhere.jpeg")
    folder, spec = read_folder(root), Preprocess(32, 32)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would go")
    with caplog.at_level(logging.WARNING):
        images, _, kept = load_arrays(folder, spec, cache_dir=blocked / "cache")
    assert len(kept) == 6 and "could not cache the decoded images" in caplog.text
    cache = tmp_path / "cache"
    load_arrays(folder, spec, cache_dir=cache)
    [saved] = cache.glob("images-*.npz")
    saved.write_bytes(saved.read_bytes()[:100])  # damaged
    with caplog.at_level(logging.WARNING):
        again, _, _ = load_arrays(folder, spec, cache_dir=cache)
    assert "unreadable cache of decoded images" in caplog.text and np.array_equal(again, images)


def test_unreadable_training_files_are_skipped_with_a_line(tmp_path, blood_cell_images, capsys):
    data = tmp_path / "data"
    make_tree(data, {"a": 2, "b": 2}, blood_cell_images[0])
    (data / "a" / "broken.jpeg").write_text("garbage")
    for _ in range(2):  # decoded, then from the cache: the broken file is reported both times
        images, labels, kept = load_arrays(read_folder(data), Preprocess(32, 32), cache_dir=tmp_path / "cache")
        assert len(images) == 4 and not any(p.endswith("broken.jpeg") for p in kept.paths)
        assert capsys.readouterr().err.count("broken.jpeg: a text file, not an image") == 1


def test_scoring_decodes_a_chunk_at_a_time_and_gives_what_decoding_everything_gives(tmp_path, blood_cells, capsys):
    folder = read_folder(blood_cells / "TEST").subset(np.arange(0, 2400, 240))
    broken = [tmp_path / "broken1.jpeg", tmp_path / "broken2.jpeg"]
    for path in broken:
        path.write_text("garbage")
    # Ten images, then a chunk of nothing readable: it is skipped, each of its files reported on its own line.
    folder = ImageFolder(folder.paths + tuple(map(str, broken)), np.r_[folder.labels, 0, 1], folder.classes)
    spec = Preprocess(32, 32)
    images, labels, kept = load_arrays(folder, spec)
    mean_pixel = lambda x: x.reshape(len(x), -1).mean(axis=1)  # noqa: E731 - stands in for a model

    chunked_labels, outputs, chunked_kept = predict_folder(folder, spec, mean_pixel, chunk=5)
    assert np.array_equal(chunked_labels, labels) and np.array_equal(outputs, mean_pixel(images))
    assert chunked_kept.paths == kept.paths and len(kept) == 10
    assert capsys.readouterr().err.count("a text file, not an image") == 4  # each broken file, once per decoding

    with pytest.raises(DatasetError, match="none of the 2 images"):
        predict_folder(folder.subset(np.array([10, 11])), spec, mean_pixel)


def test_labels_come_from_file_names_with_a_separator_and_position(tmp_path, cataract):
    photos = sorted((cataract / "cataract").iterdir())[:3] + sorted((cataract / "normal").iterdir())[:2]
    for i, photo in enumerate(photos):
        kind = "cataract" if "cataract" in str(photo.parent.name) else "normal"
        (tmp_path / f"eye_{kind}_{i}{photo.suffix}").symlink_to(photo)
    folder = read_named(tmp_path, NameLabels("_", 1))
    assert folder.classes == ("cataract", "normal") and folder.class_counts() == {"cataract": 3, "normal": 2}
    assert NameLabels(".", 0).label(Path("cat.123.jpg")) == "cat"
    with pytest.raises(DatasetError, match="no label part"):
        read_named(tmp_path, NameLabels("-", 0))


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
