"""Byte-identical files where the dataset says they differ are said once each and counted, never silently used."""

from __future__ import annotations

import logging
import shutil

import numpy as np

from medclf.train.identical import identical_files
from medclf.train.splits import load_splits


def test_an_image_under_two_classes_and_test_images_that_are_training_images_are_said_and_counted(
        tmp_path, blood_cells, caplog):
    """Merged sets repeat a scan under two classes, and scans in both their training and test folders."""
    cells = iter(sorted((blood_cells / "TEST" / "EOSINOPHIL").iterdir()))
    for split, per_class in (("train", 6), ("val", 20), ("test", 2)):
        for cls in ("glioma", "meningioma"):
            (tmp_path / split / cls).mkdir(parents=True)
            for _ in range(per_class):
                image = next(cells)
                shutil.copy(image, tmp_path / split / cls / image.name)
    first, second = sorted((tmp_path / "train" / "glioma").iterdir())[:2]
    shutil.copy(first, tmp_path / "train" / "meningioma" / "Tr-me_0101.jpg")  # also a glioma
    shutil.copy(second, tmp_path / "test" / "glioma" / "Te-gl_0007.jpg")  # also in training
    splits = load_splits(tmp_path)
    assert splits.held_out == "val/ folder"
    with caplog.at_level(logging.WARNING, logger="medclf.train.identical"):
        found = identical_files(splits)
    assert found == {"across_classes": 1, "val_in_train": 0, "test_in_train_or_val": 1}
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2
    assert said[0] == (f"1 image(s) are filed under two classes or more, byte for byte (e.g. {first} (glioma) = "
                       f"{tmp_path}/train/meningioma/Tr-me_0101.jpg (meningioma)): their labels contradict each other")
    assert said[1].startswith("1 test image(s) are, byte for byte, training or validation images (e.g. ")
    assert f"Te-gl_0007.jpg = {second}): test scores count them as unseen" in said[1]


def test_an_evaluation_of_the_very_files_a_model_trained_on_counts_them(tmp_path, blood_cells, caplog):
    """The same paths, not only copies: a run's own validation folder scored again is not unseen."""
    from medclf.train.data import read_folder
    from medclf.train.identical import seen_in_training

    folder = read_folder(blood_cells / "TEST").subset(np.arange(0, 2400, 400))
    with caplog.at_level(logging.WARNING, logger="medclf.train.identical"):
        assert seen_in_training(folder, folder.subset(np.arange(2)), folder.subset(np.arange(2, 3))) == 3
    assert "3 evaluation image(s) are, byte for byte, this model's training or validation images" in caplog.text


def test_a_held_out_split_moves_validation_twins_of_training_images_to_training_whole_groups_at_a_time(
        tmp_path, blood_cells, caplog):
    """Kermany's chest films hold twins (``person1159_virus_1944.jpeg`` = ``..._1945.jpeg``): a random split put 5
    of them beside their twin. A class keeps a validation image; a patient's files move together."""
    from medclf.train.data import ImageFolder
    from medclf.train.identical import twins_to_training

    cells = sorted((blood_cells / "TEST" / "EOSINOPHIL").iterdir())
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(20):
            shutil.copy(cells[i + (20 if cls == "b" else 0)], tmp_path / cls / f"p{i // 2}_{i}.jpeg")
        for i in range(0, 20, 4):  # a twin of every other patient's first file
            shutil.copy(tmp_path / cls / f"p{i // 2}_{i}.jpeg", tmp_path / cls / f"twin_{i}.jpeg")
    with caplog.at_level(logging.WARNING, logger="medclf.train.identical"):
        splits = load_splits(tmp_path, val_split=0.3)
    assert identical_files(splits)["val_in_train"] == 0
    assert "validation image(s) moved to training: byte-identical to training images of their class" in caplog.text

    paths = tuple(str(tmp_path / "a" / name) for name in ("p0_0.jpeg", "p0_1.jpeg", "p1_2.jpeg", "twin_0.jpeg"))
    folder = ImageFolder(paths, np.zeros(4, np.int64), ("a",))
    train, val = twins_to_training(folder.subset(np.array([3, 2])), folder.subset(np.array([0, 1])),
                                   {paths[0]: "p0", paths[1]: "p0", paths[2]: "p1", paths[3]: "twin"})
    assert len(val) == 2  # both held out: moving them would leave the class no validation image
    train, val = twins_to_training(folder.subset(np.array([3])), folder.subset(np.array([0, 1, 2])),
                                   {paths[0]: "p0", paths[1]: "p0", paths[2]: "p1", paths[3]: "twin"})
    assert val.paths == (paths[2],) and set(train.paths) == {paths[3], paths[0], paths[1]}  # p0 moved whole
    two_classes = ImageFolder(paths, np.array([0, 1, 1, 0]), ("a", "b"))  # p0: a twin in a, the one b held out
    train, val = twins_to_training(two_classes.subset(np.array([3])), two_classes.subset(np.array([0, 1, 2])),
                                   {paths[0]: "p0", paths[1]: "p0", paths[2]: "p1", paths[3]: "twin"})
    assert set(val.paths) == set(paths[:3])  # a's one validation image stays, so p0 stays whole: it straddled


def test_folds_keep_twins_of_one_class_together_joining_their_groups(cataract):
    """cataract/03.jpg and /20.jpg are one photo: in 5 folds of 59 photos, one on each side scored 1/12 of a
    fold as unseen. Twins under two classes are not joined (their labels contradict: said, not mended)."""
    from medclf.train.data import ImageFolder, read_folder
    from medclf.train.identical import twin_groups

    folder = read_folder(cataract)
    groups = twin_groups(folder, None)
    index = {path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[1]: i for i, path in enumerate(folder.paths)}
    assert groups[index["cataract/03.jpg"]] == groups[index["cataract/20.jpg"]]
    assert len(set(groups)) == len(folder) - 1
    patients = np.asarray([f"p{i // 2}" for i in range(len(folder))])
    joined = twin_groups(folder, patients)  # the twins' patients become one
    partner = index["cataract/03.jpg"] ^ 1  # the other photo of 03's patient
    assert joined[index["cataract/03.jpg"]] == joined[index["cataract/20.jpg"]] == joined[partner]
    same = ImageFolder((folder.paths[0],) * 4, np.array([0, 0, 1, 1]), ("a", "b"))
    assert twin_groups(same, None) is None  # one file repeated: most of the files, not a patient
