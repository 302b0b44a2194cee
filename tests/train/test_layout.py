"""How a dataset's layout is read: which folders are the classes and which are splits, copies of the dataset,
segmentation masks, numbered parts or finer classes — each read as its owner meant, or refused saying where
to point."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from medclf.train.data import DatasetError, read_folder, read_named
from medclf.train.groups import split_groups
from medclf.train.labellers import FolderLabels, TopFolders, recorded, rule_recorded
from medclf.train.splits import load_splits, read_labelled

from .trees import make_tree


def test_segmentation_masks_beside_their_images_are_left_out_and_said(tmp_path, blood_cell_images, caplog):
    """BUSI files ``benign (1)_mask.png`` beside ``benign (1).png``; the COVID-19 radiography database keeps
    ``COVID/images/`` and ``COVID/masks/``. Read as images, masks would be half of training and validation."""
    outline = (cv2.imread(str(blood_cell_images[0]), cv2.IMREAD_GRAYSCALE) < 128).astype(np.uint8) * 255
    for i in range(3):
        (tmp_path / "benign").mkdir(exist_ok=True)
        shutil.copy(blood_cell_images[i], tmp_path / "benign" / f"benign ({i}).jpeg")
        cv2.imwrite(str(tmp_path / "benign" / f"benign ({i})_mask.png"), outline)
        for sub in ("images", "masks"):
            (tmp_path / "COVID" / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(blood_cell_images[i], tmp_path / "COVID" / "images" / f"COVID-{i}.jpeg")
        cv2.imwrite(str(tmp_path / "COVID" / "masks" / f"COVID-{i}.png"), outline)
    with caplog.at_level("WARNING"):
        folder = read_folder(tmp_path)
    assert folder.class_counts() == {"COVID": 3, "benign": 3}
    assert not any("mask" in str(Path(path).relative_to(tmp_path)) for path in folder.paths)
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path}: 6 segmentation masks left out (e.g. COVID/masks/COVID-0.png): outlines of the images beside "
        "them, not images of a class"]


def test_a_path_that_is_no_folder_says_what_it_is(tmp_path):
    (tmp_path / "chest-xray-pneumonia.zip").write_bytes(b"PK\x03\x04")
    with pytest.raises(DatasetError, match=r"pneumonia\.zip: an archive, not a folder: unpack it and pass the folder"):
        load_splits(tmp_path / "chest-xray-pneumonia.zip")
    with pytest.raises(DatasetError, match=r"missing: no such folder$"):
        read_folder(tmp_path / "missing")


def test_one_class_is_not_a_classification_dataset(tmp_path, blood_cell_images):
    make_tree(tmp_path, {"only": 3}, blood_cell_images[0])
    with pytest.raises(DatasetError, match="at least 2 class folders"):
        read_folder(tmp_path)


def test_loose_images_named_by_label_are_answered_with_the_flag_that_reads_them(tmp_path, blood_cell_images):
    """Kaggle's dogs vs cats ships ``train/cat.0.jpg``, ``train/dog.0.jpg``: the error names --name-labels '.'."""
    for name in ("cat.0", "cat.1", "dog.0", "dog.1", "benign (1)", "benign (2)", "malignant (1)", "malignant (2)"):
        folder = tmp_path / ("pets" if "." in name else "busi")
        folder.mkdir(exist_ok=True)
        (folder / f"{name}.jpeg").write_bytes(blood_cell_images[0].read_bytes())
    with pytest.raises(DatasetError, match=r"found 0; 4 images lie loose in it, named by label \(cat, dog\): pass "
                                           r"--name-labels '\.' to read labels from the names$"):
        read_folder(tmp_path / "pets")
    with pytest.raises(DatasetError, match=r"named by label \(benign, malignant\): pass --name-labels ' '"):
        read_folder(tmp_path / "busi")
    (tmp_path / "busi" / "other.jpeg").write_bytes(blood_cell_images[0].read_bytes())
    (tmp_path / "busi" / "benign (1).jpeg").rename(tmp_path / "busi" / "IMG_1.jpeg")
    with pytest.raises(DatasetError, match=r"5 images lie loose in it: sort them into one folder per class, or label "
                                           r"them by name \(--name-labels SEP\[:POS\]\) or by a sheet \(--labels FILE"):
        read_folder(tmp_path / "busi")
    (tmp_path / "train.csv").write_text("id_code,diagnosis\n")  # APTOS: train.csv beside train_images/
    (tmp_path / "sample_submission.csv").write_text("id_code,diagnosis\n")  # ... and the template to fill in
    with pytest.raises(DatasetError, match=r"or by a sheet \(--labels .*/train\.csv\)$"):
        read_folder(tmp_path / "busi")
    (tmp_path / "zz_labels.csv").write_text("image,label\nIMG_1,benign\nother,benign\n")  # lists 2 of the 5
    with pytest.raises(DatasetError, match=r"or by a sheet \(--labels .*/zz_labels\.csv\)$"):
        read_folder(tmp_path / "busi")


def test_a_dataset_pointed_at_one_level_too_high_says_where_to_point(tmp_path, blood_cell_images):
    make_tree(tmp_path / "a" / "images", {"NORMAL": 2, "PNEUMONIA": 2}, blood_cell_images[0])
    with pytest.raises(DatasetError, match=r"found 1 \(images\); if the sub-folders of images \(NORMAL, PNEUMONIA\) "
                                           r"are the classes, point at .*images$"):
        read_folder(tmp_path / "a")
    make_tree(tmp_path / "b" / "scans" / "images", {"NORMAL": 2, "PNEUMONIA": 2}, blood_cell_images[0])
    with pytest.raises(DatasetError, match=r"found 1 \(scans\); if the sub-folders of scans/images \(NORMAL, "
                                           r"PNEUMONIA\) are the classes, point at .*b/scans/images$"):
        read_folder(tmp_path / "b")


def test_class_folders_wrapped_in_a_folder_of_their_own_name_are_read_from_there(tmp_path, blood_cell_images,
                                                                                 caplog):
    """Archives unpack into a folder of their name, sometimes twice: the kidney CT set as
    ``CT-KIDNEY-DATASET-Normal-Cyst-Tumor-Stone/CT-KIDNEY-DATASET-Normal-Cyst-Tumor-Stone/{Cyst,...}`` with its
    sheet beside the inner folder, the diabetic retinopathy set as ``gaussian_filtered_images/gaussian_filtered_
    images/{Mild,...}`` (both were refused, pointing at the inner folder)."""
    name = "CT-KIDNEY-DATASET-Normal-Cyst-Tumor-Stone"
    make_tree(tmp_path / "ct-kidney-dataset" / name / name, {"Cyst": 2, "Normal": 3}, blood_cell_images[0])
    (tmp_path / "ct-kidney-dataset" / name / "kidneyData.csv").write_text("image_id,Class\n")
    with caplog.at_level(logging.WARNING):
        splits = load_splits(tmp_path / "ct-kidney-dataset", val_split=0.4)
        folder = read_folder(tmp_path / "ct-kidney-dataset")  # as medclf evaluate reads its DATA
    assert splits.train.classes == folder.classes == ("Cyst", "Normal") and len(folder) == 5
    assert caplog.messages == 2 * [f"{tmp_path / 'ct-kidney-dataset'}: holds only {name}/{name}, wrapped in a folder "
                                   "of its own name as archives unpack: reading the classes there"]
    make_tree(tmp_path / "gaussian_filtered_images" / "gaussian_filtered_images", {"Mild": 2, "No_DR": 2},
              blood_cell_images[0])
    assert read_folder(tmp_path / "gaussian_filtered_images").classes == ("Mild", "No_DR")


def test_a_split_dataset_inside_a_folder_of_its_own_is_read_from_there(tmp_path, blood_cell_images, caplog):
    """Archives unpack into a folder of their name: Kaggle's chest X-rays as ``chest_xray/chest_xray/train``."""
    for split in ("train", "test"):
        make_tree(tmp_path / "chest_xray" / split, {"NORMAL": 3, "PNEUMONIA": 3}, blood_cell_images[0])
    (tmp_path / "notes.txt").write_text("downloaded from Kaggle")
    with caplog.at_level(logging.WARNING):
        splits = load_splits(tmp_path)
    assert (len(splits.train) + len(splits.val), len(splits.test)) == (6, 6)
    assert caplog.messages == [f"{tmp_path}: holds only chest_xray, a dataset split into test, train: reading that"]


def test_splits_are_found_however_a_dataset_spells_them(tmp_path, blood_cell_images):
    """The seed tutorials' dogs and cats ship ``training_set/`` and ``test_set/``; others ``Training``,
    ``Testing``, ``val-images``."""
    for split in ("training_set", "test_set"):
        make_tree(tmp_path / "dogs" / split, {"cats": 2, "dogs": 2}, blood_cell_images[0])
    for split in ("Training", "val-images", "Testing_Data"):
        make_tree(tmp_path / "mri" / split, {"glioma": 2, "notumor": 2}, blood_cell_images[0])
    dogs, mri = load_splits(tmp_path / "dogs"), load_splits(tmp_path / "mri")
    assert all("/training_set/" in p for p in dogs.train.paths) and all("/test_set/" in p for p in dogs.test.paths)
    assert [Path(s.paths[0]).parts[-3] for s in (mri.train, mri.val, mri.test)] == [
        "Training", "val-images", "Testing_Data"]
    for split in ("train", "dev", "holdout"):  # ignored without a word before: trained on train/ alone
        make_tree(tmp_path / "nlp-style" / split, {"a": 2, "b": 2}, blood_cell_images[0])
    spelt = load_splits(tmp_path / "nlp-style")
    assert "/dev/" in spelt.val.paths[0] and "/holdout/" in spelt.test.paths[0]
    for split in ("train", "eval"):  # eval/ beside train/ was ignored too: 15% of train/ held out instead
        make_tree(tmp_path / "eval-style" / split, {"a": 20, "b": 20}, blood_cell_images[0])
    assert "/eval/" in load_splits(tmp_path / "eval-style").val.paths[0]
    make_tree(tmp_path / "flat", {"cats": 2, "dogs": 2, "test_set/cats": 1, "test_set/dogs": 1}, blood_cell_images[0])
    with pytest.raises(DatasetError, match="test_set looks like a split"):
        load_splits(tmp_path / "flat")



def test_class_folders_split_themselves_are_read_as_those_splits(tmp_path, blood_cell_images, caplog):
    """NORMAL/{Train,Val,Test} and PNEUMONIA/{Train,Val,Test} were pooled, with advice to pass --leaf-folders
    (which would train Train against Test): the test images were trained on and nothing was scored. Cross-
    validation leaves the test images out of its folds."""
    from medclf.train.splits import pooled_for_folds

    for name in ("NORMAL", "PNEUMONIA"):
        make_tree(tmp_path / name, {"Train": 20, "Val": 20, "Test": 10}, blood_cell_images[0])
    with caplog.at_level(logging.WARNING):
        splits = load_splits(tmp_path)
    assert splits.train.classes == ("NORMAL", "PNEUMONIA")
    assert [len(part) for part in (splits.train, splits.val, splits.test)] == [40, 40, 20]
    assert all(f"/{split}/" in path for split, part in (("Train", splits.train), ("Val", splits.val),
                                                        ("Test", splits.test)) for path in part.paths)
    assert splits.held_out == "each class folder's own validation folder" and "leaf-folders" not in caplog.text
    assert len(pooled_for_folds(tmp_path)) == 80
    assert len(read_labelled(tmp_path, splits.train.classes)) == 20  # scored: its test images alone
    shutil.copy(blood_cell_images[1], tmp_path / "NORMAL" / "beside.jpeg")  # one image beside the splits: said
    with caplog.at_level(logging.WARNING):
        assert load_splits(tmp_path).test is None
    assert "but 1 images lie outside those folders" in caplog.text


@pytest.mark.parametrize("names", [("seg_train/seg_train", "seg_test/seg_test"), ("chest_train", "chest_test"),
                                   ("1_train", "2_val", "3_test"), ("train_dir", "test_dir"),
                                   ("ISIC2018_Task3_Training_Input", "ISIC2018_Task3_Test_Input")])
def test_split_folders_carrying_a_word_of_their_own_are_splits_not_classes(names, tmp_path, blood_cell_images):
    """Intel's image set ships seg_train/seg_train/ and seg_test/seg_test/: read as two classes, seg_test and
    seg_train, the model learned which split a file sat in and the test images were trained on."""
    for name in names:
        make_tree(tmp_path / name, {"NORMAL": 20, "PNEUMONIA": 20}, blood_cell_images[0])
    splits = load_splits(tmp_path)
    assert splits.train.classes == ("NORMAL", "PNEUMONIA") and len(splits.test) == 40
    assert all(Path(names[0]).parts[0] in path for path in splits.train.paths)
    assert splits.held_out == ("2_val/ folder" if "2_val" in names else "15% of the images at random")
    make_tree(tmp_path / "classes", {"pre_training": 2, "post_training": 2}, blood_cell_images[0])
    assert load_splits(tmp_path / "classes").train.classes == ("post_training", "pre_training")  # one split word
    from medclf.train.layout import _split_word

    assert _split_word("ISIC2018_Task3_Training_GroundTruth") is None  # the answers, not the images


def test_a_copy_of_the_dataset_inside_it_is_not_a_class(tmp_path, blood_cell_images, caplog):
    """The NIH malaria archive unpacks to ``cell_images/{Parasitized,Uninfected}`` and, beside them,
    ``cell_images/cell_images/{Parasitized,Uninfected}``: a third class made of the other two."""
    make_tree(tmp_path, {"Parasitized": 2, "Uninfected": 2, "cell_images/Parasitized": 2,
                         "cell_images/Uninfected": 2}, blood_cell_images[0])
    with caplog.at_level("WARNING"):
        assert read_folder(tmp_path).class_counts() == {"Parasitized": 2, "Uninfected": 2}
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'cell_images'}: holds folders named as the classes beside it (Parasitized, Uninfected), so "
        "it is a copy of the dataset, not a class; left out"]


def test_numbered_parts_holding_the_same_class_folders_are_pooled_by_class(tmp_path, blood_cell_images, caplog):
    """C-NMC ships ``training_data/fold_0/{all,hem}``, ``fold_1/{all,hem}``, ``fold_2/{all,hem}``: the folds are
    parts of one training set (they were read as three classes); ``all`` and ``hem`` are the classes."""
    make_tree(tmp_path, {f"fold_{k}/{name}": k + 1 for k in range(3) for name in ("all", "hem")},
              blood_cell_images[0])
    with caplog.at_level("WARNING"):
        folder = read_folder(tmp_path)
    assert folder.class_counts() == {"all": 6, "hem": 6}
    assert sorted(Path(path).relative_to(tmp_path).as_posix() for path in folder.paths)[:3] == [
        "fold_0/all/img0.jpeg", "fold_0/hem/img0.jpeg", "fold_1/all/img0.jpeg"]
    assert caplog.messages == [f"{tmp_path}: fold_0, fold_1, fold_2 are numbered parts of the dataset, each holding "
                               "the same class folders (all, hem): read as 2 classes, each pooled over the parts"]
    make_tree(tmp_path / "test", {"fold_0/all": 1, "fold_0/hem": 1, "fold_1/all": 2, "fold_1/hem": 1},
              blood_cell_images[0])
    assert read_folder(tmp_path / "test", ("all", "hem")).class_counts() == {"all": 3, "hem": 2}  # a test split too


def test_patients_or_slides_each_holding_class_folders_are_not_classes(tmp_path, blood_cell_images, caplog):
    """The IDC breast histology patches: ``10253/{0,1}``, ``10254/{0,1}``... for 279 patients (one without any
    positive patch lacks ``1/``). Read as 279 classes of patients before."""
    make_tree(tmp_path, {f"{patient}/{label}": 2 for patient in range(10253, 10265) for label in "01"
                         if (patient, label) != (10264, "1")}, blood_cell_images[0])
    with caplog.at_level("WARNING"):
        folder = read_folder(tmp_path)
    assert folder.class_counts() == {"0": 24, "1": 22}
    assert caplog.messages == [f"{tmp_path}: its 12 folders (10253, 10254, 10255, 10256, ...) are numbered as "
                               "patients or slides are, each holding class folders (0, 1): read as 2 classes, each "
                               "pooled over them"]
    make_tree(tmp_path / "words", {f"{organ}/{view}": 1 for organ in ("liver", "lung", "heart", "brain", "bone",
                                                                      "skin", "eye", "colon", "kidney", "breast")
                                   for view in ("axial", "coronal")}, blood_cell_images[0])
    assert len(read_folder(tmp_path / "words").classes) == 10  # classes named by words hold what they like


def test_class_folders_that_all_hold_the_same_sub_folders_are_warned_of(tmp_path, blood_cell_images, caplog):
    """Sites (or views) under each class are the same sub-folders everywhere: which level is the class is the
    user's to say, so the folders stay the classes, with a warning."""
    make_tree(tmp_path, {f"{site}/{name}": 1 for site in ("siteA", "siteB") for name in ("normal", "tumour")},
              blood_cell_images[0])
    with caplog.at_level("WARNING"):
        assert read_folder(tmp_path).classes == ("siteA", "siteB")
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path}: every class folder (siteA, siteB) holds the same sub-folders (normal, tumour): if those "
        "are the classes, pass --leaf-folders (or point at one of the folders here)"]
    caplog.clear()
    make_tree(tmp_path / "uneven", {"fold_0/all": 1, "fold_0/hem": 1, "fold_1/all": 1}, blood_cell_images[0])
    with caplog.at_level("WARNING"):  # parts that do not hold the same classes are not pooled
        assert read_folder(tmp_path / "uneven").classes == ("fold_0", "fold_1")


def test_numbered_parts_of_one_image_folder_are_not_classes(tmp_path, blood_cell_images, caplog):
    """HAM10000 ships ``HAM10000_images_part_1/`` and ``_part_2/`` beside the sheet holding the labels."""
    make_tree(tmp_path, {"HAM10000_images_part_1": 2, "HAM10000_images_part_2": 2}, blood_cell_images[0])
    with caplog.at_level("WARNING"):
        read_folder(tmp_path)
    assert caplog.messages == [f"{tmp_path}: the class folders (HAM10000_images_part_1, HAM10000_images_part_2) are "
                               "numbered parts of one folder of images, not classes: if the labels are elsewhere, "
                               "pass --labels FILE.csv"]
    (tmp_path / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\n")
    with pytest.raises(DatasetError, match=r"not classes; to take the labels from HAM10000_metadata\.csv beside "
                                           r"them, pass --labels .*HAM10000_metadata\.csv$"):
        read_folder(tmp_path)
    make_tree(tmp_path / "grades", {"grade1": 2, "grade2": 2}, blood_cell_images[0])
    assert read_folder(tmp_path / "grades").classes == ("grade1", "grade2")  # classes named by number: classes


def test_classes_split_into_finer_ones_named_after_them_are_read_as_those(tmp_path, blood_cell_images, caplog):
    """LC25000 unpacks to ``lung_image_sets/{lung_aca,lung_n,lung_scc}`` beside ``colon_image_sets/{colon_aca,
    colon_n}``: five tissue types, the classes of every paper on it (they were read as two organs); the Multi
    Cancer set names its finer classes after its organs the same way (``Cervical Cancer/cervix_dyk``)."""
    make_tree(tmp_path / "lc", {"lung_image_sets/lung_aca": 2, "lung_image_sets/lung_n": 1,
                                "lung_image_sets/lung_scc": 1, "colon_image_sets/colon_aca": 1,
                                "colon_image_sets/colon_n": 1}, blood_cell_images[0])
    with caplog.at_level("WARNING"):
        folder = read_folder(tmp_path / "lc")
    assert folder.class_counts() == {"colon_aca": 1, "colon_n": 1, "lung_aca": 2, "lung_n": 1, "lung_scc": 1}
    assert caplog.messages == [
        f"{tmp_path / 'lc'}: every folder here holds only folders named after it (colon_image_sets: colon_aca, "
        "colon_n; lung_image_sets: lung_aca, lung_n, lung_scc): read as the 5 finer classes (colon_aca, colon_n, "
        "lung_aca, lung_n, ...); to classify colon_image_sets, lung_image_sets instead, pass --top-folders"]
    make_tree(tmp_path / "multi", {"Cervical Cancer/cervix_dyk": 1, "Cervical Cancer/cervix_koc": 1,
                                   "Lymphoma/lymph_cll": 1, "Lymphoma/lymph_fl": 1, "ALL/all_benign": 1,
                                   "ALL/all_early": 1}, blood_cell_images[0])
    assert read_folder(tmp_path / "multi").classes == ("all_benign", "all_early", "cervix_dyk", "cervix_koc",
                                                       "lymph_cll", "lymph_fl")


def test_patients_numbered_alike_under_each_site_of_a_class_are_not_read_as_classes(tmp_path, blood_cell_images):
    """NORMAL/hospital_A/patient001/ ... was read as a tree of categories: a model telling 12 patients apart."""
    places = [(label, site) for label in ("NORMAL", "PNEUMONIA") for site in "AB"]
    layout = {f"{label}/hospital_{site}/patient{3 * i + k + 1:03d}": 4 for i, (label, site) in enumerate(places)
              for k in range(3)}
    make_tree(tmp_path / "films", layout, blood_cell_images[0])
    folder = read_folder(tmp_path / "films")
    assert folder.class_counts() == {"NORMAL": 24, "PNEUMONIA": 24}
    groups = split_groups(folder, copies=None)  # and each patient is held together, three levels down
    assert len(set(groups)) == 12 and all(group.startswith("folder:hospital_") for group in groups)


def test_trees_of_categories_are_read_as_the_classes_at_their_ends(tmp_path, blood_cell_images, caplog):
    """HyperKvasir files its 23 classes under 2 regions and the kinds of finding (``lower-gi-tract/
    pathological-findings/polyps/``): they were read as the two regions. Trees whose ends repeat a name
    (BreakHis' magnifications under each patient) or are numbers (a scan's UID), or with more folders on a level
    than categories have (patients), keep their top folders as the classes."""
    kvasir = {"lower-gi-tract/anatomical-landmarks/cecum": 2, "lower-gi-tract/anatomical-landmarks/ileum": 1,
              "lower-gi-tract/pathological-findings/polyps": 1, "lower-gi-tract/pathological-findings/hemorrhoids": 1,
              "upper-gi-tract/anatomical-landmarks/pylorus": 1, "upper-gi-tract/anatomical-landmarks/z-line": 1,
              "upper-gi-tract/pathological-findings/barretts": 1,
              "upper-gi-tract/pathological-findings/esophagitis-a": 1}
    make_tree(tmp_path / "kvasir", kvasir, blood_cell_images[0])
    with caplog.at_level("WARNING"):
        folder = read_folder(tmp_path / "kvasir")
    assert folder.class_counts() == {"barretts": 1, "cecum": 2, "esophagitis-a": 1, "hemorrhoids": 1, "ileum": 1,
                                     "polyps": 1, "pylorus": 1, "z-line": 1}
    assert caplog.messages == [
        f"{tmp_path / 'kvasir'}: lower-gi-tract, upper-gi-tract are categories, their images filed 2 levels down or "
        "more (lower-gi-tract/anatomical-landmarks/cecum, lower-gi-tract/anatomical-landmarks/ileum, ...): read as "
        "the 8 classes there (cecum, ileum, hemorrhoids, polyps, ...); to classify lower-gi-tract, upper-gi-tract "
        "instead, pass --top-folders"]
    breakhis = {f"{kind}/{tumour}/patient{k}/{zoom}": 1 for kind, tumour in (("benign", "adenosis"),
                                                                           ("malignant", "ductal_carcinoma"))
                for k in (1, 2) for zoom in ("40X", "100X")}
    make_tree(tmp_path / "breakhis", breakhis, blood_cell_images[0])
    assert read_folder(tmp_path / "breakhis").classes == ("benign", "malignant")
    make_tree(tmp_path / "uids", {f"{kind}/P{k}/1.2.840.{k}{s}": 1 for kind in ("NORMAL", "TUMOUR") for k in (1, 2)
                                  for s in (1, 2)}, blood_cell_images[0])
    assert read_folder(tmp_path / "uids").classes == ("NORMAL", "TUMOUR")
    make_tree(tmp_path / "patients", {f"{kind}/patient{k}/{view}_{k}": 1 for kind in ("NORMAL", "TUMOUR")
                                      for k in range(12) for view in ("axial", "coronal")}, blood_cell_images[0])
    assert read_folder(tmp_path / "patients").classes == ("NORMAL", "TUMOUR")


def test_a_split_read_against_the_training_classes_finds_them_anywhere_on_its_paths(tmp_path, blood_cell_images,
                                                                                    caplog):
    """A test folder filed as its training set was, but holding only some of its categories' classes (one leaf
    under a category is no tree), or a validation fold (``fold_2/{all,hem}``), is read by the first folder on
    each path named as a training class; files under none are left out, counted."""
    make_tree(tmp_path / "test", {"lower-gi-tract/pathological-findings/polyps": 2,
                                  "upper-gi-tract/anatomical-landmarks/z-line": 1, "upper-gi-tract/unsorted": 1},
                                  blood_cell_images[0])
    with caplog.at_level("WARNING"):
        folder = read_folder(tmp_path / "test", ("cecum", "polyps", "z-line"))
    assert folder.class_counts() == {"cecum": 0, "polyps": 2, "z-line": 1}
    assert caplog.messages == [f"{tmp_path / 'test'}: no folder here is a training class: each image labelled by the "
                               "first folder on its path named as one; 1 under none left out (e.g. "
                               "upper-gi-tract/unsorted/img0.jpeg)"]
    make_tree(tmp_path / "validation", {"fold_2/all": 1, "fold_2/hem": 2}, blood_cell_images[0])
    assert read_folder(tmp_path / "validation", ("all", "hem")).class_counts() == {"all": 1, "hem": 2}
    make_tree(tmp_path / "kvasir" / "train", {f"{region}/{kind}/{name}": 3 for region, kind, names in (
        ("lower-gi-tract", "anatomical-landmarks", ("cecum", "ileum")),
        ("lower-gi-tract", "pathological-findings", ("polyps", "hemorrhoids")),
        ("upper-gi-tract", "anatomical-landmarks", ("z-line", "pylorus")),
        ("upper-gi-tract", "pathological-findings", ("barretts", "esophagitis-a"))) for name in names},
        blood_cell_images[0])
    (tmp_path / "test").rename(tmp_path / "kvasir" / "test")  # found beside train/, not named: read the same way
    assert load_splits(tmp_path / "kvasir").test.class_counts()["polyps"] == 2


def test_class_folders_that_keep_their_images_in_a_few_other_folders_stay_the_classes(tmp_path, blood_cell_images,
                                                                                      caplog):
    """Sub-folders not named after their folder (tumour types under benign and malignant), or named after it
    with the same endings everywhere (sites), or beside images of the folder's own, do not make finer classes:
    the folders stay the classes, the first two with a warning."""
    make_tree(tmp_path / "types", {"benign/adenosis": 1, "benign/fibroadenoma": 1, "malignant/ductal_carcinoma": 1,
                                   "malignant/lobular_carcinoma": 1}, blood_cell_images[0])
    with caplog.at_level("WARNING"):
        assert read_folder(tmp_path / "types").classes == ("benign", "malignant")
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'types'}: every class folder keeps its images in a few sub-folders of its own (benign: "
        "adenosis, fibroadenoma; malignant: ductal_carcinoma, lobular_carcinoma): trained as 2 classes (benign, "
        "malignant); if the 4 sub-folders are the classes, pass --leaf-folders"]
    make_tree(tmp_path / "sites", {"Normal/Normal_siteA": 1, "Normal/Normal_siteB": 1, "Pneumonia/Pneumonia_siteA": 1,
                                   "Pneumonia/Pneumonia_siteB": 1}, blood_cell_images[0])
    assert read_folder(tmp_path / "sites").classes == ("Normal", "Pneumonia")
    make_tree(tmp_path / "own", {"lung/lung_aca": 1, "lung/lung_n": 1, "colon/colon_aca": 1, "colon/colon_n": 1,
                                 "colon/colon_scc": 1}, blood_cell_images[0])
    (tmp_path / "own" / "colon" / "extra.jpeg").write_bytes(blood_cell_images[0].read_bytes())
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert read_folder(tmp_path / "own").classes == ("colon", "lung")
    assert not caplog.records


def test_leaf_folders_read_the_folder_holding_each_image_as_its_class(tmp_path, blood_cell_images, caplog):
    """HyperKvasir files its 23 classes two levels down (``lower-gi-tract/pathological-findings/polyps/``); sites
    hold the same classes (``siteB/.../polyps``: one class with the others); an image in no folder is left out."""
    make_tree(tmp_path / "kvasir", {"lower-gi-tract/pathological-findings/polyps": 2,
                                    "lower-gi-tract/anatomical-landmarks/cecum": 1,
                                    "upper-gi-tract/anatomical-landmarks/pylorus": 1,
                                    "siteB/lower-gi-tract/pathological-findings/polyps": 1}, blood_cell_images[0])
    (tmp_path / "kvasir" / "loose.jpeg").write_bytes(blood_cell_images[0].read_bytes())
    with caplog.at_level(logging.WARNING):
        folder = read_named(tmp_path / "kvasir", FolderLabels())
    assert folder.class_counts() == {"cecum": 1, "polyps": 3, "pylorus": 1}
    assert caplog.messages == [f"{tmp_path / 'kvasir'}: 1 image(s) in no folder of their own, left out (e.g. "
                               "loose.jpeg)"]
    assert read_named(tmp_path / "kvasir" / "lower-gi-tract", FolderLabels(), ("cecum", "polyps", "pylorus")
                      ).class_counts() == {"cecum": 1, "polyps": 2, "pylorus": 0}  # a test split of some of them


def test_top_folders_read_the_folders_below_the_dataset_as_they_stand(tmp_path, blood_cell_images, caplog):
    """The other reading of a layout medclf reads further down: LC25000's organs, not its five tissue types (a
    run trained so scores other data the same way)."""
    make_tree(tmp_path / "lc", {"lung_image_sets/lung_aca": 2, "lung_image_sets/lung_n": 1,
                                "colon_image_sets/colon_aca": 1, "colon_image_sets/colon_n": 1}, blood_cell_images[0])
    (tmp_path / "lc" / "loose.jpeg").write_bytes(blood_cell_images[0].read_bytes())
    (tmp_path / "lc" / "__MACOSX" / "lung_image_sets").mkdir(parents=True)
    (tmp_path / "lc" / "__MACOSX" / "lung_image_sets" / "x.jpeg").write_bytes(blood_cell_images[0].read_bytes())
    with caplog.at_level(logging.WARNING):
        folder = read_named(tmp_path / "lc", TopFolders())
    assert folder.class_counts() == {"colon_image_sets": 2, "lung_image_sets": 3}
    assert caplog.messages == [f"{tmp_path / 'lc'}: 1 image(s) in no folder of their own, left out (e.g. "
                               "loose.jpeg)"]  # macOS' copy of the tree is no image of the user's
    assert rule_recorded(recorded(TopFolders())) == TopFolders()


def test_a_class_name_no_labels_file_can_carry_is_refused_before_training(tmp_path, blood_cell_images):
    """A folder "a\\nb" made Triton's labels.txt (a line per class) name the wrong classes from there on; a
    Latin-1 folder name trained, then no export could be written ("surrogates not allowed")."""
    from medclf.train.layout import check_class_names
    from medclf.train.pipeline import Recipe, train

    check_class_names(("NORMAL", "Pneumonie bactérienne", "ER+/PR+", "mass [benign]"))  # any printable name
    for bad, said in (("a\nb", "holds a line break, tab or other control character"),
                      (os.fsdecode(b"bact\xe9rienne"), "is not UTF-8")):
        with pytest.raises(DatasetError, match=said):
            check_class_names(("NORMAL", bad))
    for name in ("NORMAL", "a\nb"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i, image in enumerate(blood_cell_images[:4]):
            (tmp_path / "data" / name / f"{i}.jpeg").symlink_to(image)
    with pytest.raises(DatasetError, match="line break"):
        train(tmp_path / "data", tmp_path / "run", Recipe(arch="small_cnn", image_size=32, val_split=0.5))
    assert not (tmp_path / "run").exists()
