"""Folder-per-class datasets: what counts as a class, how splits are made, and the decode-once cache."""

from __future__ import annotations

import numpy as np
import pytest

from medclf.runtime.preprocess import Preprocess, load_image
from medclf.train.data import DatasetError, load_arrays, load_splits, read_folder, stratified_split


def make_tree(root, counts: dict[str, int], source) -> None:
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"img{i}.jpeg").write_bytes(source.read_bytes())


def test_classes_are_sorted_folder_names_and_hidden_things_are_ignored(tmp_path, blood_cell_images):
    make_tree(tmp_path, {"b": 2, "a": 3, ".cache": 2, "empty": 0}, blood_cell_images[0])
    (tmp_path / "a" / ".DS_Store").write_text("x")
    (tmp_path / "a" / "notes.txt").write_text("x")
    folder = read_folder(tmp_path)
    assert folder.classes == ("a", "b")
    assert folder.class_counts() == {"a": 3, "b": 2}


def test_one_class_is_not_a_classification_dataset(tmp_path, blood_cell_images):
    make_tree(tmp_path, {"only": 3}, blood_cell_images[0])
    with pytest.raises(DatasetError, match="at least 2 class folders"):
        read_folder(tmp_path)


def test_validation_split_is_stratified_and_disjoint(blood_cells):
    folder = read_folder(blood_cells / "TRAIN")
    train, val = stratified_split(folder, 0.2, seed=0)
    assert not set(train.paths) & set(val.paths)
    assert len(train) + len(val) == len(folder)
    shares = np.bincount(val.labels) / len(val)
    assert np.allclose(shares, np.bincount(folder.labels) / len(folder), atol=0.01)


def test_pre_split_layout_uses_its_own_val_and_test_folders(tmp_path, blood_cell_images):
    for split in ("train", "val", "test"):
        make_tree(tmp_path / split, {"cat": 2, "dog": 2}, blood_cell_images[0])
    splits = load_splits(tmp_path)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4, 4, 4)
    assert all("/val/" in p for p in splits.val.paths)


def test_test_folder_with_an_unknown_class_is_refused(tmp_path, blood_cell_images):
    make_tree(tmp_path / "train", {"cat": 2, "dog": 2}, blood_cell_images[0])
    make_tree(tmp_path / "test", {"cat": 1, "bird": 1}, blood_cell_images[0])
    with pytest.raises(DatasetError, match="bird"):
        load_splits(tmp_path)


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


def test_unreadable_training_files_are_skipped_with_a_line(tmp_path, blood_cell_images, capsys):
    make_tree(tmp_path, {"a": 2, "b": 2}, blood_cell_images[0])
    (tmp_path / "a" / "broken.jpeg").write_text("garbage")
    images, labels, kept = load_arrays(read_folder(tmp_path), Preprocess(32, 32))
    assert len(images) == 4 and not any(p.endswith("broken.jpeg") for p in kept.paths)
    assert "broken.jpeg: not a readable image" in capsys.readouterr().err
