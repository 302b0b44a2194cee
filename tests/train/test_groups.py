"""Which files belong together: a patient's films stay on one side of a split, found from what the user says,
the layout, or the names — and names numbered through a class or an augmentation are not taken for patients."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from medclf.train.data import ImageFolder, read_folder
from medclf.train.groups import (file_groups, group_kind, name_groups, name_key, source_groups, split_groups,
                                 subfolder_groups)
from medclf.train.splits import load_splits, stratified_split

KERMANY_PATIENT = r"^(person\d+|(?:NORMAL2-)?IM-\d+)"  # the chest preset's --group-pattern


def _folder(names_by_class: dict[str, list[str]]) -> ImageFolder:
    """An ImageFolder of file names alone: name grouping reads names, never pixels."""
    paths = [f"/data/{name}/{file}" for name, files in names_by_class.items() for file in files]
    labels = [k for k, files in enumerate(names_by_class.values()) for _ in files]
    return ImageFolder(tuple(paths), np.asarray(labels), tuple(names_by_class))


@pytest.mark.parametrize("name, class_name, key", [
    ("person12_bacteria_3.jpeg", "PNEUMONIA", "person12"),
    ("person12_virus_7.jpeg", "PNEUMONIA", "person12"),  # one child, two findings: one group
    ("IM-0115-0001.jpeg", "NORMAL", "IM-0115"),
    ("NORMAL2-IM-1427-0001.jpeg", "NORMAL", "NORMAL2-IM-1427"),
    ("CNV-1016042-1.jpeg", "CNV", "-1016042"),
    ("DRUSEN-1016042-2.jpeg", "DRUSEN", "-1016042"),  # OCT: the same eye under another class, one group
    ("C100P61ThinF_IMG_20150918_144104_cell_162.png", "Parasitized", "C100P61ThinF_IMG_20150918_144104"),
    ("person12_bacteria_3.aug2.jpeg", "PNEUMONIA", "person12"),  # medclf augment's copy: its source's
    ("9003175_1.png", "0", "9003175"),  # knee X-rays graded 0-4: patient 9003175's first knee
    ("0123456_2.png", "0", "0123456"),  # a class name is not cut from a number it opens
    ("10_left.jpeg", "0", "10"),  # EyePACS: patient 10's left eye (and 10_right.jpeg, perhaps in another grade)
    ("Calc-Training_P_00005_RIGHT_CC.png", "BENIGN", "Calc-Training_P_00005"),  # CBIS-DDSM: breast and view
    ("UID_11_10_1_all.bmp", "all", "UID_11_10"),  # C-NMC: subject 11's image 10, cell 1, and its class
    ("UID_H10_1_2_hem.bmp", "hem", "UID_H10_1"),
    ("9003175_1.png", "1", "9003175"),  # a class named by a number is not cut from the name's end
    ("cat.12.jpg", "cats", "cat."),  # no number before the image's: the whole class (refused by name_groups)
    ("benign (1).png", "benign", None),
    ("0f3a9c.jpg", "grade0", None),
    ("123.png", "x", None),
])
def test_a_name_without_its_last_number_is_what_a_patients_images_share(name, class_name, key):
    assert name_key(name, class_name) == key


def test_the_chest_films_numbered_names_hold_each_patient_on_one_side_by_default(chest_xray, caplog):
    """Kermany's films are named per patient (person12_bacteria_3.jpeg, IM-0115-0001.jpeg); the default split
    (no --group-pattern) holds out whole patients by name, where a split drawn image by image leaks them."""
    with caplog.at_level(logging.WARNING):
        splits = load_splits(chest_xray / "train", 0.15, group_copies=None)
    assert "3445 of 5216 images share the name before their own number with others (1075 groups such as " \
           "'person23…', up to 30 images)" in caplog.text
    assert splits.held_out == "15% of the images, whole patients at a time"
    keys = {split: {name_key(Path(p).name, "NORMAL") for p in getattr(splits, split).paths} for split in ("train",
                                                                                                         "val")}
    assert not (keys["train"] & keys["val"]) - {None}
    # IM-0435-0001-0001.jpeg is IM-0435-0001.jpeg's patient too: 18 patients straddled the split by name alone
    assert not set(file_groups(splits.train.paths, KERMANY_PATIENT)) & set(file_groups(splits.val.paths,
                                                                                      KERMANY_PATIENT))
    folder = read_folder(chest_xray / "train")
    _, naive_val = stratified_split(folder, 0.15, seed=0)  # drawn one by one: patients straddle
    assert {name_key(Path(p).name, "NORMAL") for p in naive_val.paths} & keys["train"] - {None}
    assert group_kind(split_groups(folder, copies=None)) == "patients"


def test_names_numbered_through_a_class_are_not_patients_and_copies_are_looked_for_first(blood_cells, cataract):
    cats_and_dogs = _folder({"cats": [f"cat.{i}.jpg" for i in range(300)],
                             "dogs": [f"dog.{i}.jpg" for i in range(300)]})
    assert name_groups(cats_and_dogs) is None  # one "patient" per class
    cells = split_groups(read_folder(blood_cells / "TEST"), copies=None)  # _3_1169.jpeg: augmentation 3's
    assert len(set(cells)) == 100 and not any(str(group).startswith("name:") for group in cells)  # the 100 cells
    assert name_groups(read_folder(cataract)) is None  # 01.jpg ... 59.jpg: nothing shared
    few = _folder({"a": [f"p{i}_{j}.png" for i in range(10) for j in range(2)] + [f"x{i}a.png" for i in range(40)],
                   "b": [f"q{i}.png" for i in range(60)]})
    assert name_groups(few) is None  # 10 patients of two images: too few groups to call it how the set is named


def test_a_rare_class_of_two_patients_does_not_hide_the_naming():
    """Two patients' 30 images each are most of a rare class: still patients."""
    common = {"common": [f"p{i}_{j}.png" for i in range(300) for j in range(3)],
              "rare": [f"r{i}_{j}.png" for i in range(2) for j in range(30)]}
    groups = name_groups(_folder(common))
    assert groups is not None and len(set(groups)) == 302


def test_names_are_grouped_as_far_up_as_they_still_name_patients():
    """OASIS numbers each scan's slices (``OAS1_0028_MR1_mpr-1_100.jpg``) and scans a subject 3-4 times
    (``mpr-1``...``mpr-4``): one brain, one group. BreakHis' ``SOB_B_A-14-22549AB-40-001.png`` is one patient at
    one magnification: the patient's four magnifications, one group — not the year's tumours of one type."""
    oasis = {grade: [f"OAS1_{subject:04d}_MR1_mpr-{scan}_{k}.jpg" for subject in range(30 * g, 30 * g + 30)
                     for scan in range(1, 5) for k in range(100, 110)]
             for g, grade in enumerate(("Non Demented", "Mild Dementia"))}
    groups = name_groups(_folder(oasis))
    assert groups is not None and len(set(groups)) == 60 and groups[0] == "name:OAS1_0000"
    types = {"B": ("A", "F", "PT", "TA"), "M": ("DC", "LC", "MC", "PC")}
    breakhis = {kind: [f"SOB_{kind}_{t}-14-{patient}{t}-{zoom}-{k:03d}.png" for t in tumours
                       for patient in range(10000, 10006) for zoom in (40, 100, 200, 400) for k in range(5)]
                for kind, tumours in types.items()}
    groups = name_groups(_folder(breakhis))
    assert groups is not None and len(set(groups)) == 48 and groups[0] == "name:SOB_B_A-14-10000A"


    cells = {kind: [f"UID_{'H' if kind == 'hem' else ''}{subject}_{image}_{cell}_{kind}.bmp" for subject in range(30)
                    for image in range(1, 6) for cell in range(1, 4)] for kind in ("all", "hem")}
    groups = name_groups(_folder(cells))  # C-NMC: one subject's cells, every image of them
    assert groups is not None and len(set(groups)) == 60 and groups[0] == "name:UID_0"
    eyes = {grade: [f"{patient}_{side}.jpeg" for patient in range(100 * g, 100 * g + 100) for side in ("left", "right")]
            for g, grade in enumerate("01234")}
    groups = name_groups(_folder(eyes))
    assert groups is not None and len(set(groups)) == 500 and list(groups[:2]) == ["name:0", "name:0"]


def test_kermanys_chest_films_stay_grouped_by_patient_not_by_prefix(chest_xray):
    """``IM-0115`` → ``IM`` would be most of the normal films: the grouping stops at the patient."""
    groups, sizes = np.unique(name_groups(read_folder(chest_xray / "train")), return_counts=True)
    assert (len(groups), np.sum(sizes > 1), sizes.max()) == (2846, 1075, 30)  # 2,914 with IM-0435-0001-* apart


def test_what_is_held_together_is_named_for_the_summary_lines(blood_cells, chest_xray):
    chest = read_folder(chest_xray / "test")
    assert group_kind(split_groups(chest, KERMANY_PATIENT)) == "patients"
    assert group_kind(split_groups(chest, copies=None)) == "patients"  # by their numbered names
    assert group_kind(split_groups(read_folder(blood_cells / "TEST"), copies=True)) == "sources"  # one cell's copies


def test_one_eye_filed_under_two_classes_is_one_group():
    octs = {name: [f"{name}-{1000 + i}-{j}.jpeg" for i in range(100) for j in range(3)] for name in ("CNV", "DRUSEN")}
    octs["DRUSEN"].append("DRUSEN-1000-7.jpeg")
    groups = name_groups(_folder(octs))
    assert groups is not None
    assert groups[0] == groups[-1] == "name:-1000"  # CNV-1000-0 and DRUSEN-1000-7


def test_copies_medclf_augment_wrote_stay_with_their_source_and_its_whole_group(caplog):
    """Its brightness and turns hid them from the copy search: every validation photo of an augmented cataract
    set had copies in training."""
    photos = _folder({"cataract": [f"{i:02d}.aug{k}.jpg" for i in range(30) for k in range(4)],
                      "normal": [f"{i:02d}.jpg" for i in range(30)]})
    with caplog.at_level(logging.WARNING):
        groups = split_groups(photos, copies=None)
    assert len(set(groups)) == 60 and len(set(groups[:4])) == 1  # 30 sources of 4 copies, 30 photos alone
    assert "120 of 150 images are copies medclf augment wrote" in caplog.text
    films = _folder({"PNEUMONIA": ["person1_virus_1.jpeg", "person1_virus_2.jpeg", "person1_virus_2.aug0.jpeg",
                                   "person2_virus_1.aug0.jpeg"]})
    by_pattern = split_groups(films, pattern=r"^(person\d+)_virus_\d+\.jpeg$")  # no match in the copies' names
    assert set(by_pattern[:3]) == {"pattern:person1"} and by_pattern[3] != by_pattern[0]  # with patient 1's films
    webp = split_groups(_folder({"a": ["scan.webp", "scan.webp.aug0.png", "scan.webp.aug1.png", "other.webp"]}))
    assert len(set(webp[:3])) == 1 and webp[3] != webp[0]  # a format augment does not write is copied as PNG
    uid = "1.2.840.113619.2.55.3.100"  # a DICOM named by its UID: its last part looks like an extension
    dicom = split_groups(_folder({"a": [uid, f"{uid}.aug0.png", f"{uid}.aug1.png", "1.2.840.113619.2.55.3.101"]}))
    assert len(set(dicom[:3])) == 1 and dicom[3] != dicom[0]


def test_a_grouped_split_never_puts_one_patients_images_on_both_sides(chest_xray):
    folder = read_folder(chest_xray / "train")
    pattern = KERMANY_PATIENT
    train, val = stratified_split(folder, 0.15, seed=0, groups=split_groups(folder, pattern))
    train_patients, val_patients = set(file_groups(train.paths, pattern)), set(file_groups(val.paths, pattern))
    assert not train_patients & val_patients
    assert 0.10 < len(val) / len(folder) < 0.20
    share = val.class_counts()["PNEUMONIA"] / len(val)
    assert abs(share - folder.class_counts()["PNEUMONIA"] / len(folder)) < 0.05
    naive_train, naive_val = stratified_split(folder, 0.15, seed=0)  # the ungrouped split leaks patients
    assert set(file_groups(naive_train.paths, pattern)) & set(file_groups(naive_val.paths, pattern))


def test_images_filed_by_patient_folder_keep_each_patient_on_one_side_by_default(tmp_path, chest_xray, caplog):
    """``CLASS/patient/image``, as PACS exports and many archives file them: the default split holds out whole
    patient folders (here the chest films' real patients, refiled by the patient in their names)."""
    pattern = KERMANY_PATIENT
    for name in ("NORMAL", "PNEUMONIA"):
        for film in sorted((chest_xray / "train" / name).iterdir())[:150]:
            patient = tmp_path / "data" / name / file_groups((film.name,), pattern)[0]
            patient.mkdir(parents=True, exist_ok=True)
            (patient / film.name).symlink_to(film)
    with caplog.at_level(logging.WARNING):
        splits = load_splits(tmp_path / "data", 0.15, group_copies=None)
    folder_of = {split: {Path(path).parent.name for path in getattr(splits, split).paths} for split in ("train", "val")}
    assert folder_of["val"] and not folder_of["train"] & folder_of["val"]
    assert "sit in 237 sub-folders of their class folders (patients, studies): a folder's images are kept together" \
        in caplog.text
    assert subfolder_groups(read_folder(chest_xray / "test")) is None  # files right in their class folders


def test_patients_filed_deeper_below_their_class_are_found_at_their_level(tmp_path, blood_cell_images, caplog):
    """BreakHis: ``benign/SOB/adenosis/SOB_B_A_14-22549AB/40X/*.png`` — one SOB folder and a few tumour types
    per class above the patients, a folder per magnification below them."""
    for k in range(24):
        tumour = ("benign/SOB/adenosis", "benign/SOB/fibroadenoma", "malignant/SOB/ductal_carcinoma")[k % 3]
        for magnification in ("40X", "100X"):
            images = tmp_path / tumour / f"patient{k}" / magnification
            images.mkdir(parents=True)
            (images / f"{k}_{magnification}.png").symlink_to(blood_cell_images[k % len(blood_cell_images)])
    folder = read_folder(tmp_path)
    with caplog.at_level(logging.WARNING):
        groups = subfolder_groups(folder)
    assert len(set(groups)) == 24  # a patient's magnifications together
    assert "48 of 48 images sit in 24 folders 3 levels below their class folders (such as SOB/adenosis/patient0)" \
        in caplog.text


def test_patients_holding_class_folders_keep_each_patient_on_one_side_by_default(tmp_path, chest_xray, caplog):
    """The IDC breast histology patches are filed ``<patient>/{0,1}/``: the classes are pooled over the patients
    (:mod:`.layout`) and the default split holds out whole patients (here the chest films' real patients)."""
    numbers: dict[str, int] = {}  # IDC numbers its patients: 10253, 10254...
    for name, label in (("NORMAL", "0"), ("PNEUMONIA", "1")):
        for film in sorted((chest_xray / "train" / name).iterdir())[:150]:
            number = numbers.setdefault(file_groups((film.name,), KERMANY_PATIENT)[0], 10253 + len(numbers))
            patient = tmp_path / "data" / str(number) / label
            patient.mkdir(parents=True, exist_ok=True)
            (patient / film.name).symlink_to(film)
    with caplog.at_level(logging.WARNING):
        splits = load_splits(tmp_path / "data", 0.15, group_copies=None)
    assert splits.train.classes == ("0", "1")
    patient_of = {split: {Path(path).parent.parent.name for path in getattr(splits, split).paths}
                  for split in ("train", "val")}
    assert patient_of["val"] and not patient_of["train"] & patient_of["val"]
    assert "images sit in class folders inside" in caplog.text and "whole patients" in splits.summary()


def test_categories_each_holding_classes_of_their_own_are_not_patients(tmp_path, blood_cell_images):
    """Grouped by category, a category's classes would all be held out together, and never trained on."""
    for k in range(12):
        for leaf in (f"finding{k}a", f"finding{k}b"):
            (tmp_path / f"category{k}" / leaf).mkdir(parents=True)
            (tmp_path / f"category{k}" / leaf / "x.png").symlink_to(blood_cell_images[0])
    folder = read_folder(tmp_path, tuple(f"finding{k}{s}" for k in range(12) for s in "ab"))
    assert source_groups(folder) is None
    assert source_groups(read_folder(tmp_path / "category0")) is None  # class folders right in DATA


def test_a_few_patients_folders_or_numbered_names_are_held_out_whole_from_seven_on(tmp_path, blood_cell_images,
                                                                                      caplog):
    """9 patient folders, or 18 patients' numbered films, were split image by image (ten and twenty were
    needed): 8 of the 9 patients sat on both sides. Fewer than seven are said."""
    from .trees import make_tree

    make_tree(tmp_path / "nine", {f"{label}/p{k}": 8 for label, ks in (("NORMAL", range(4)), ("PNEUMONIA",
                                                                                          range(4, 9))) for k in ks},
              blood_cell_images[0])
    assert len(set(split_groups(read_folder(tmp_path / "nine"), copies=None))) == 9
    for label, patients in (("NORMAL", range(9)), ("PNEUMONIA", range(9, 18))):
        (tmp_path / "named" / label).mkdir(parents=True)
        for patient in patients:
            for k in range(5):
                (tmp_path / "named" / label / f"patient{patient:02d}_{k}.jpeg").write_bytes(
                    blood_cell_images[(patient * 5 + k) % len(blood_cell_images)].read_bytes())
    named = split_groups(read_folder(tmp_path / "named"), copies=None)
    assert named is not None and len(set(named)) == 18
    make_tree(tmp_path / "four", {f"{label}/p{k}": 8 for label, ks in (("NORMAL", range(2)), ("PNEUMONIA",
                                                                                          range(2, 4))) for k in ks},
              blood_cell_images[0])
    with caplog.at_level(logging.WARNING):
        assert split_groups(read_folder(tmp_path / "four"), copies=None) is None
    assert "32 of 32 images sit in 4 sub-folders of their class folders (patients, studies?): too few" in caplog.text


def test_sub_types_body_sites_and_graded_findings_are_not_taken_for_patients(tmp_path, blood_cell_images, caplog):
    """Held out as patients from 7 groups, 8 named sub-types (BreakHis' adenosis, ...) went whole to validation,
    unseen in training, and 8 body sites' name prefixes (arm_b01) too; a tree whose leaves are grade_1..3
    under one kind of finding was read as its two top folders."""
    from .trees import make_tree

    kinds = {"benign": ("adenosis", "fibroadenoma", "phyllodes", "tubular"), "malignant": ("ductal", "lobular",
                                                                                          "mucinous", "papillary")}
    make_tree(tmp_path / "types", {f"{label}/{kind}": 12 for label, names in kinds.items() for kind in names},
              blood_cell_images[0])
    sites = ("back", "chest", "face", "scalp", "arm", "leg", "hand", "foot")
    for label in ("benign", "malignant"):
        (tmp_path / "sites" / label).mkdir(parents=True)
        for k, site in enumerate(sites * 8):
            (tmp_path / "sites" / label / f"{site}_{label[0]}{k:02d}.png").write_bytes(
                blood_cell_images[k % len(blood_cell_images)].read_bytes())
    graded = {f"lower-gi/finding/colitis_grade_{k}": 2 for k in (1, 2, 3)} | {
        f"{part}/{kind}/{name}": 2 for part, kind, names in (
            ("lower-gi", "landmark", ("cecum", "ileum")), ("upper-gi", "landmark", ("pylorus", "z-line")),
            ("upper-gi", "finding", ("barretts", "esophagitis"))) for name in names}
    make_tree(tmp_path / "graded", graded, blood_cell_images[0])
    with caplog.at_level(logging.WARNING):
        assert split_groups(read_folder(tmp_path / "types"), copies=None) is None
        assert name_groups(read_folder(tmp_path / "sites")) is None
        assert len(read_folder(tmp_path / "graded").classes) == 9
    assert "patients, studies" not in caplog.text


def test_groups_found_too_few_for_the_validation_share_fall_back_to_a_split_image_by_image(tmp_path,
                                                                                          blood_cell_images, caplog):
    """8 patient folders at --val-split 0.1 (10 folds) stopped a run that split image by image before."""
    from .trees import make_tree

    make_tree(tmp_path / "eight", {f"{label}/p{k}": 6 for label, ks in (("a", range(4)), ("b", range(4, 8)))
                                   for k in ks}, blood_cell_images[0])
    with caplog.at_level(logging.WARNING):
        splits = load_splits(tmp_path / "eight", val_split=0.1, group_copies=None)
    assert len(splits.val) > 0 and "the 8 groups found are too few to hold 10% of them out whole" in caplog.text
