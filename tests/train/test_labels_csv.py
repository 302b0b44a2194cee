"""``--labels FILE.csv``: labels (and patients) from a spreadsheet beside one folder of images, as PACS exports
and HAM10000, APTOS and ISIC ship them."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from medclf.train.data import read_dataset
from medclf.train.labels_csv import LabelsError, read_labels_csv, sheet_beside
from medclf.train.splits import load_splits, pooled_for_folds, read_labelled


def images(folder, blood_cell_images, names):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).symlink_to(blood_cell_images[i % len(blood_cell_images)])


def test_a_ham10000_style_sheet_gives_labels_by_image_id_and_holds_out_whole_lesions(tmp_path, blood_cell_images):
    """HAM10000's metadata: ``lesion_id,image_id,dx,...``; photos of one lesion stay on one side of the split."""
    names = [f"ISIC_{i:07d}.jpg" for i in range(24)]
    images(tmp_path / "images", blood_cell_images, names)
    rows = [f"HAM_{i // 3:07d},ISIC_{i:07d},{'nv' if i < 12 else 'mel'},histo,45,male,back" for i in range(24)]
    (tmp_path / "meta.csv").write_text("lesion_id,image_id,dx,dx_type,age,sex,localization\n" + "\n".join(rows))
    naming = read_labels_csv(str(tmp_path / "meta.csv"))
    folder = read_dataset(tmp_path / "images", naming=naming)
    assert folder.class_counts() == {"mel": 12, "nv": 12}
    splits = load_splits(tmp_path / "images", val_split=0.25, naming=naming)
    assert splits.held_out == "25% of the images, whole patients at a time"
    lesion = {f"ISIC_{i:07d}.jpg": i // 3 for i in range(24)}
    held = {lesion[path.rsplit("/", 1)[1]] for path in splits.val.paths}
    assert held and not held & {lesion[path.rsplit("/", 1)[1]] for path in splits.train.paths}


def test_one_zero_or_one_column_per_class_is_read_as_the_class_holding_one(tmp_path, blood_cell_images):
    """ISIC 2019's ground truth: ``image,MEL,NV,BCC,UNK`` with 1.0 under each image's class."""
    images(tmp_path / "img", blood_cell_images, [f"ISIC_{i}.jpg" for i in range(6)])
    rows = ["ISIC_0,1.0,0.0,0.0,0.0", "ISIC_1,0.0,1.0,0.0,0.0", "ISIC_2,0.0,0.0,1.0,0.0", "ISIC_3,1.0,0.0,0.0,0.0",
            "ISIC_4,0.0,1.0,0.0,0.0", "ISIC_5,0.0,0.0,1.0,0.0"]
    (tmp_path / "gt.csv").write_text("image,MEL,NV,BCC,UNK\n" + "\n".join(rows) + "\n")
    folder = read_dataset(tmp_path / "img", naming=read_labels_csv(str(tmp_path / "gt.csv")))
    assert folder.class_counts() == {"BCC": 2, "MEL": 2, "NV": 2}


def test_numbers_are_class_names_and_files_are_found_with_or_without_extension_at_any_depth(tmp_path,
                                                                                          blood_cell_images):
    """APTOS: ``id_code,diagnosis`` with grades 0-4; a sheet may name files, ids or paths."""
    images(tmp_path / "train_images" / "batch1", blood_cell_images, ["a1.png", "b2.png"])
    images(tmp_path / "train_images", blood_cell_images, ["c3.png", "d4.png"])
    (tmp_path / "train.csv").write_text("id_code,diagnosis\na1,0\nbatch1/b2.png,2\nC3.PNG,0\nd4,2\n")
    folder = read_dataset(tmp_path / "train_images", naming=read_labels_csv(str(tmp_path / "train.csv")))
    assert folder.classes == ("0", "2") and folder.class_counts() == {"0": 2, "2": 2}


def test_columns_named_otherwise_are_given_after_the_file(tmp_path, blood_cell_images):
    images(tmp_path / "x", blood_cell_images, ["p1.jpg", "p2.jpg", "p3.jpg"])
    (tmp_path / "sheet.csv").write_text("\ufeffAccession;Scan;Reading;Reader\n1;p1.jpg;normal;A\n2;p2.jpg;effusion;B\n"
                                        "3;p3.jpg;normal;A\n")  # Excel's BOM and semicolons
    with pytest.raises(LabelsError, match=r"which column is the label\? Columns: Accession, Scan, Reading, Reader; "
                                          r"say it as --labels .*sheet.csv:Accession,COLUMN"):
        read_labels_csv(str(tmp_path / "sheet.csv"))
    naming = read_labels_csv(f"{tmp_path / 'sheet.csv'}:Scan,Reading")
    assert read_dataset(tmp_path / "x", naming=naming).class_counts() == {"effusion": 1, "normal": 2}
    with pytest.raises(LabelsError, match=r"no column 'Finding'"):
        read_labels_csv(f"{tmp_path / 'sheet.csv'}:Scan,Finding")


def test_an_image_listed_with_two_labels_is_refused(tmp_path):
    (tmp_path / "l.csv").write_text("filename,label\nx.jpg,cat\nx.jpg,dog\n")
    with pytest.raises(LabelsError, match=r"l.csv: x.jpg is listed as both cat and dog"):
        read_labels_csv(str(tmp_path / "l.csv"))
    (tmp_path / "l.csv").write_text("filename,label\nE0.JPG,eos\ne0.jpg,lym\n")  # one image, however cased: it
    with pytest.raises(LabelsError, match=r"l.csv: e0.jpg is listed as both eos and lym"):  # was left out unsaid
        read_labels_csv(str(tmp_path / "l.csv"))


def test_images_the_sheet_does_not_list_are_left_out_in_one_warning(tmp_path, blood_cell_images, caplog):
    images(tmp_path / "imgs", blood_cell_images, ["a.jpg", "b.jpg", "c.jpg", "extra.jpg"])
    (tmp_path / "l.csv").write_text("image,label\na,x\nb,y\nc,x\nnot_here,y\n")
    with caplog.at_level(logging.WARNING):
        folder = read_dataset(tmp_path / "imgs", naming=read_labels_csv(str(tmp_path / "l.csv")))
    assert len(folder) == 3 and not any("extra" in path for path in folder.paths)
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'imgs'}: 1 image(s) not listed in {tmp_path / 'l.csv'}, left out (e.g. extra.jpg)"]
    assert np.array_equal(np.bincount(folder.labels), [2, 1])


def test_a_multi_label_sheet_is_refused_with_what_to_do(tmp_path):
    """NIH ChestX-ray14: ``Image Index, Finding Labels, Follow-up #, Patient ID``; 'Effusion|Mass' is two."""
    (tmp_path / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels,Follow-up #,Patient ID\n"
                                                  "00000001_000.png,Cardiomegaly,0,1\n"
                                                  "00000001_001.png,Cardiomegaly|Emphysema,1,1\n")
    with pytest.raises(LabelsError, match=r"Data_Entry_2017.csv: 1 rows name several findings \(e.g. "
                                          r"Cardiomegaly\|Emphysema\); medclf learns one label per image"):
        read_labels_csv(str(tmp_path / "Data_Entry_2017.csv"))
    (tmp_path / "one.csv").write_text("Image Index,Finding Labels,Follow-up #,Patient ID\n"
                                      "00000001_000.png,Cardiomegaly,0,1\n00000002_000.png,No Finding,0,2\n")
    naming = read_labels_csv(str(tmp_path / "one.csv"))  # its columns found by their headers, patients too
    assert naming.labels["00000002_000"] == "No Finding" and naming.groups["00000001_000.png"] == "1"


def test_a_sheet_that_splits_its_images_is_trained_chosen_and_scored_on_its_splits(tmp_path, blood_cell_images,
                                                                                      caplog):
    """MedMNIST's own ``save`` writes every split into one folder (``train0_3.png``, ``val5_1.png``,
    ``test2_0.png``) beside a headerless AutoML Vision list, ``TRAIN,train0_3.png,3``: its published splits are
    what baselines are measured on. Cross-validation folds its training and validation rows, never its test rows;
    ``medclf evaluate`` scores its test rows."""
    folder = tmp_path / "bloodmnist"
    folder.mkdir()
    rows = []
    for split, count in (("train", 40), ("val", 24), ("test", 10)):
        for i in range(count):
            name = f"{split}{i}_{i % 2}.png"
            (folder / name).symlink_to(blood_cell_images[i % len(blood_cell_images)])
            rows.append(f"{ {'val': 'VALIDATION'}.get(split, split.upper()) },{name},{i % 2}")
    (tmp_path / "bloodmnist.csv").write_text("\n".join(rows) + "\n")
    naming = read_labels_csv(str(tmp_path / "bloodmnist.csv"))
    with caplog.at_level(logging.WARNING):
        splits = load_splits(folder, naming=naming)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 24, 10)
    assert {Path(p).name[:4] for p in splits.test.paths} == {"test"}
    assert splits.train.classes == ("basophil", "eosinophil")  # MedMNIST's names for its 0 and 1
    assert caplog.messages[0] == ("bloodmnist.csv: splits its images itself (40 train, 24 val, 10 test): each is "
                                  "used as its split")
    assert len(pooled_for_folds(folder, naming)) == 64
    given = load_splits(folder, naming=naming, test=folder).test  # --test DATA: its training rows were scored too
    assert {Path(p).name[:4] for p in given.paths} == {"test"} and len(given) == 10
    assert {Path(p).name[:4] for p in read_labelled(folder, ("basophil", "eosinophil"), naming).paths} == {"test"}


@pytest.mark.parametrize("spelt", [("train", "validate", "holdout"), ("train_set", "validation_set", "test_set"),
                                   ("Training", "Dev", "Test-Data")])
def test_a_sheets_splits_are_read_however_it_spells_them(spelt, tmp_path):
    """Spellings outside a short list were read as training rows (or the column dropped): the sheet's own test
    images trained on, then scored as unseen."""
    rows = [f"{i}.png,{i % 2},{spelt[i % 3]}" for i in range(6)] + ["6.png,0,", "7.png,1,UNASSIGNED"]
    (tmp_path / "labels.csv").write_text("image,label,split\n" + "\n".join(rows) + "\n")
    splits = read_labels_csv(str(tmp_path / "labels.csv")).splits
    assert [splits.get(f"{i}.png", "") for i in range(8)] == ["train", "val", "test"] * 2 + ["", ""]


def test_a_split_value_medclf_cannot_read_is_refused_not_trained_on(tmp_path):
    (tmp_path / "labels.csv").write_text("image,label,split\na.png,0,train\nb.png,1,test\nc.png,1,holdout2\n")
    with pytest.raises(LabelsError, match="column split names splits, but also 'holdout2'"):
        read_labels_csv(str(tmp_path / "labels.csv"))


def test_a_sheet_listing_paths_whose_file_names_repeat_labels_each_image_by_its_path(tmp_path, blood_cell_images):
    """MURA, CheXpert: every patient's study holds a ``view1.png``. Keyed by name, two labels for one name were
    refused, and agreeing ones collapsed every patient into the last one listed."""
    rows = ["Path,label,patient_id"]
    for i, label in enumerate(["normal", "abnormal", "normal", "abnormal"]):
        for view in (1, 2):
            image = tmp_path / "data" / "images" / f"patient{i:02d}" / f"view{view}.jpeg"
            image.parent.mkdir(parents=True, exist_ok=True)
            image.symlink_to(blood_cell_images[2 * i + view - 1])
            rows.append(f"images/patient{i:02d}/view{view}.jpeg,{label},p{i}")
    (tmp_path / "data" / "images" / "patient09").mkdir()
    (tmp_path / "data" / "images" / "patient09" / "view1.jpeg").symlink_to(blood_cell_images[0])  # not listed
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    naming = read_labels_csv(str(tmp_path / "labels.csv"))
    root = tmp_path / "data" / "images"
    assert [naming.label(root / f"patient{i:02d}" / "view1.jpeg") for i in range(4)] == ["normal", "abnormal"] * 2
    assert naming.group(root / "patient03" / "view2.jpeg") == "p3" and naming.label(root / "patient09" / "view1.jpeg") \
        is None
    assert read_dataset(tmp_path / "data", naming=naming).class_counts() == {"abnormal": 4, "normal": 4}


@pytest.mark.parametrize("encoded", [
    lambda text: text.encode("cp1252"),  # Excel's "CSV (Comma delimited)" on a Western Windows
    lambda text: text.encode("utf-16"),  # Excel's "Unicode Text", with its mark
    lambda text: ("sep=;\r\n" + text.replace(",", ";")).encode("utf-8-sig"),  # Excel's delimiter line first
], ids=["windows-1252", "utf-16", "sep line"])
def test_a_sheet_is_read_as_excel_saves_it(encoded, tmp_path, caplog):
    """Refused as "cannot be read as CSV" (Windows-1252, UTF-16), or read with a stray `sep=;` entry."""
    (tmp_path / "labels.csv").write_bytes(encoded("image,diagnosis\r\na.png,névus\r\nb.png,mélanome\r\n"))
    naming = read_labels_csv(str(tmp_path / "labels.csv"))
    assert naming.labels == {"a.png": "névus", "a": "névus", "b.png": "mélanome", "b": "mélanome"}


def test_a_sheet_listing_paths_from_the_datasets_own_folder_labels_and_splits_them_alike(tmp_path, blood_cell_images):
    """CheXpert's sheet lists ``CheXpert-v1.0-small/train/patientNN/...`` and DATA may be that folder itself; a
    name keyed by its path for labels but by itself for splits (its blank-split twin kept) put a test image in
    training."""
    root = tmp_path / "CheXpert-v1.0-small"
    rows = ["Path,label,split"]
    for i in range(4):
        for view, split in ((1, "train" if i else "test"), (2, "test" if i == 0 else "")):
            image = root / "train" / f"patient{i:05d}" / "study1" / f"view{view}.jpg"
            image.parent.mkdir(parents=True, exist_ok=True)
            image.symlink_to(blood_cell_images[2 * i + view - 1])
            rows.append(f"CheXpert-v1.0-small/train/patient{i:05d}/study1/view{view}.jpg,{'ab' if i % 2 else 'no'},"
                        f"{split}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    naming = read_labels_csv(str(root / "train.csv"))
    for data in (tmp_path, root):  # the folder the paths start from, or the dataset's own
        assert read_dataset(data, naming=naming).class_counts() == {"ab": 4, "no": 4}
    splits = load_splits(root, naming=naming, val_split=0.3)
    assert sorted(Path(p).relative_to(root).as_posix() for p in splits.test.paths) == [
        "train/patient00000/study1/view1.jpg", "train/patient00000/study1/view2.jpg"]


def test_a_utf8_sheet_with_one_row_in_another_encoding_is_refused_naming_the_line(tmp_path):
    """Read as Windows-1252 whole, its UTF-8 labels were garbled into other classes (névus → nÃ©vus)."""
    (tmp_path / "labels.csv").write_bytes("image,label\na.png,névus\n".encode() + "b.png,névus\n".encode("cp1252"))
    with pytest.raises(LabelsError, match="line 3 is not UTF-8 where the rest is"):
        read_labels_csv(str(tmp_path / "labels.csv"))


def test_a_workbook_given_as_the_sheet_is_told_to_be_saved_as_csv(tmp_path):
    """An .xlsx was "line 1 is not UTF-8 where the rest is: save the sheet as UTF-8"."""
    import zipfile

    with zipfile.ZipFile(tmp_path / "labels.xlsx", "w") as workbook:  # what an .xlsx is: a ZIP of XML parts
        workbook.writestr("[Content_Types].xml", "<Types/>")
    with pytest.raises(LabelsError, match=r"labels.xlsx: a spreadsheet workbook, not a CSV file: save the sheet as "
                                          r"CSV"):
        read_labels_csv(str(tmp_path / "labels.xlsx"))


def test_a_sheet_giving_several_labels_a_row_without_a_header_is_refused(tmp_path):
    """MedMNIST's ChestMNIST lists 14 findings a row."""
    (tmp_path / "chestmnist.csv").write_text("TRAIN,train0_0_1_0.png,0,1,0\n")
    with pytest.raises(LabelsError, match="rows give 3 labels each"):
        read_labels_csv(str(tmp_path / "chestmnist.csv"))


def test_a_sheet_named_as_a_folder_of_loose_images_labels_them_unasked(tmp_path, blood_cell_images, caplog):
    """``python -m medmnist save`` leaves ``bloodmnist/`` and ``bloodmnist.csv`` side by side: pointing at the
    images is enough. A folder with sub-folders (classes) or a sheet named otherwise is not read so."""
    images(tmp_path / "bloodmnist", blood_cell_images, ["train0_1.png", "test0_0.png"])
    (tmp_path / "bloodmnist.csv").write_text("TRAIN,train0_1.png,1\nTEST,test0_0.png,0\n")
    with caplog.at_level(logging.WARNING):
        naming = sheet_beside(tmp_path / "bloodmnist")
    assert naming is not None and naming.label(Path("train0_1.png")) == "eosinophil"  # as MedMNIST names its 1
    assert naming.label(Path("test0_0.png")) == "basophil" and naming.split(Path("test0_0.png")) == "test"
    assert caplog.messages == [f"{tmp_path / 'bloodmnist'}: its images lie loose beside bloodmnist.csv: labels read "
                               f"from that (as --labels {tmp_path / 'bloodmnist.csv'})"]
    given = read_labels_csv(str(tmp_path / "bloodmnist.csv"))  # as the line says: --labels reads the same names
    assert given.label(Path("train0_1.png")) == "eosinophil"
    (tmp_path / "bloodmnist.csv").rename(tmp_path / "mine.csv")  # a set MedMNIST does not name: its numbers kept
    (tmp_path / "bloodmnist").rename(tmp_path / "mine")
    assert sheet_beside(tmp_path / "mine").label(Path("train0_1.png")) == "1"
    (tmp_path / "mine" / "extra").mkdir()
    assert sheet_beside(tmp_path / "mine") is None
    assert sheet_beside(tmp_path) is None  # no tmp_path.csv beside it


def test_a_sheet_beside_numbered_parts_of_one_image_folder_labels_them_unasked(tmp_path, blood_cell_images, caplog):
    """HAM10000 unpacks to ``HAM10000_images_part_1/``, ``_part_2/`` (Kaggle's copy adds lowercase twins of both)
    beside ``HAM10000_metadata.csv`` and pixel tables (``hmnist_8_8_L.csv``), which label no image file."""
    images(tmp_path / "HAM10000_images_part_1", blood_cell_images, ["ISIC_0000001.jpg", "ISIC_0000002.jpg"])
    images(tmp_path / "HAM10000_images_part_2", blood_cell_images, ["ISIC_0000003.jpg", "ISIC_0000004.jpg"])
    (tmp_path / "hmnist_8_8_L.csv").write_text("pixel0000,pixel0001,label\n12,40,2\n")
    (tmp_path / "HAM10000_metadata.csv").write_text(
        "lesion_id,image_id,dx\nHAM_1,ISIC_0000001,nv\nHAM_1,ISIC_0000002,nv\nHAM_2,ISIC_0000003,mel\n"
        "HAM_3,ISIC_0000004,bkl\n")
    with caplog.at_level(logging.WARNING):
        naming = sheet_beside(tmp_path)
    assert naming is not None and naming.source.name == "HAM10000_metadata.csv"
    assert caplog.messages == [f"{tmp_path}: its images are in numbered parts (HAM10000_images_part_1, "
                               "HAM10000_images_part_2), labelled by HAM10000_metadata.csv: reading that (as "
                               f"--labels {tmp_path / 'HAM10000_metadata.csv'})"]
    assert read_dataset(tmp_path, naming=naming).class_counts() == {"bkl": 1, "mel": 1, "nv": 2}
    (tmp_path / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\nHAM_1,ISIC_0000001,nv\n")
    assert sheet_beside(tmp_path) is None  # a sheet labelling a quarter of them is not theirs: refused as before


def test_a_training_split_of_loose_images_is_labelled_by_the_sheet_beside_it_that_lists_them(tmp_path,
                                                                                           blood_cell_images, caplog):
    """APTOS ships ``train_images/`` beside ``train.csv`` (id_code, diagnosis), a ``test_images/`` its
    ``test.csv`` does not label, and a ``sample_submission.csv``; EyePACS ``train/`` beside ``trainLabels.csv``
    (image, level). Pointing at the dataset, or at its loose folder, is enough."""
    ids = [f"{k:08x}" for k in range(12)]
    images(tmp_path / "aptos" / "train_images", blood_cell_images, [f"{name}.png" for name in ids])
    images(tmp_path / "aptos" / "test_images", blood_cell_images, ["ffff0001.png", "ffff0002.png"])
    (tmp_path / "aptos" / "sample_submission.csv").write_text("id_code,diagnosis\nffff0001,0\nffff0002,0\n")
    (tmp_path / "aptos" / "train.csv").write_text("id_code,diagnosis\n" + "".join(
        f"{name},{k % 3}\n" for k, name in enumerate(ids)))
    with caplog.at_level(logging.WARNING):
        naming = sheet_beside(tmp_path / "aptos")
    assert naming.source.name == "train.csv"
    assert caplog.messages == [f"{tmp_path / 'aptos'}: the images in train_images/ lie loose, labelled by train.csv: "
                               f"reading that (as --labels {tmp_path / 'aptos' / 'train.csv'})"]
    splits = load_splits(tmp_path / "aptos", val_split=0.25, naming=naming)
    assert splits.train.classes == ("0", "1", "2") and len(splits.train) + len(splits.val) == 12
    assert splits.test is None  # its test images are listed by no sheet: unlabelled, said
    assert sheet_beside(tmp_path / "aptos" / "train_images").source.name == "train.csv"
    images(tmp_path / "eyepacs" / "train", blood_cell_images, ["10_left.jpeg", "10_right.jpeg", "13_left.jpeg"])
    (tmp_path / "eyepacs" / "trainLabels.csv").write_text("image,level\n10_left,0\n10_right,0\n13_left,2\n")
    assert read_dataset(tmp_path / "eyepacs" / "train", naming=sheet_beside(tmp_path / "eyepacs")
                        ).class_counts() == {"0": 2, "2": 1}
    (tmp_path / "eyepacs" / "trainLabels.csv").write_text("image,level\n10_left,0\n")
    assert sheet_beside(tmp_path / "eyepacs") is None  # a sheet listing a third of them is not theirs
    isic = tmp_path / "isic"  # one folder of images beside a one-hot ground truth and a metadata sheet
    images(isic / "ISIC_2019_Training_Input", blood_cell_images, ["ISIC_0000000.jpg", "ISIC_0000001.jpg"])
    (isic / "ISIC_2019_Training_Metadata.csv").write_text("image,age_approx,lesion_id\nISIC_0000000,55,\n")
    (isic / "ISIC_2019_Training_GroundTruth.csv").write_text("image,MEL,NV\nISIC_0000000,1.0,0.0\n"
                                                            "ISIC_0000001,0.0,1.0\n")
    assert read_dataset(isic, naming=sheet_beside(isic)).class_counts() == {"MEL": 1, "NV": 1}


def test_a_ground_truth_sheet_beside_images_and_their_masks_labels_the_images(tmp_path, blood_cell_images):
    """ISIC/HAM10000 mirrors ship images/ and masks/ beside the ground truth: the sheet was passed over for two
    folders, and "images" against "masks" was trained (validation accuracy 1.000)."""
    import shutil

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rows = ["image,MEL,NV"]
    for i, image in enumerate(blood_cell_images):
        shutil.copy(image, tmp_path / "images" / f"ISIC_{i:07d}.jpg")
        shutil.copy(image, tmp_path / "masks" / f"ISIC_{i:07d}_segmentation.png")
        rows.append(f"ISIC_{i:07d},{float(i % 2)},{float(1 - i % 2)}")
    (tmp_path / "GroundTruth.csv").write_text("\n".join(rows) + "\n")
    naming = sheet_beside(tmp_path)
    assert naming is not None and naming.source.name == "GroundTruth.csv"
    assert read_dataset(tmp_path, naming=naming).class_counts() == {"MEL": 4, "NV": 4}


def test_a_test_set_the_training_sheet_does_not_list_is_read_by_its_class_folders_or_its_own_sheet(
        tmp_path, blood_cell_images, caplog):
    """A sheet-labelled run refused ``--test`` in class folders ("no image in classes in train.csv"), and called a
    ``test/`` beside its own ``test.csv`` unlabelled. A competition's answer template (one label for all) is no
    labels."""
    from medclf.train.labels_csv import sheet_beside

    images(tmp_path / "d" / "train", blood_cell_images, [f"t{i}.png" for i in range(40)])
    (tmp_path / "d" / "train.csv").write_text("image,label\n" + "".join(f"t{i}.png,{'ab' if i % 2 else 'no'}\n"
                                                                        for i in range(40)))
    images(tmp_path / "d" / "test", blood_cell_images, [f"s{i}.png" for i in range(6)])
    (tmp_path / "d" / "sample_submission.csv").write_text("image,label\n" + "".join(f"s{i}.png,no\n"
                                                                                    for i in range(6)))
    naming = sheet_beside(tmp_path / "d")
    assert load_splits(tmp_path / "d", naming=naming).test is None  # the template labels nothing
    (tmp_path / "d" / "test.csv").write_text("image,label\n" + "".join(f"s{i}.png,{'ab' if i % 3 else 'no'}\n"
                                                                       for i in range(6)))
    assert load_splits(tmp_path / "d", naming=naming).test.class_counts() == {"ab": 4, "no": 2}
    for name in ("ab", "no"):
        images(tmp_path / "classes" / name, blood_cell_images, [f"c{i}.png" for i in range(3)])
    with caplog.at_level(logging.WARNING):
        given = load_splits(tmp_path / "d", naming=naming, test=tmp_path / "classes").test
    assert given.class_counts() == {"ab": 3, "no": 3}
    assert "not listed in" not in caplog.text  # the training sheet was not tried on it first


def test_a_sheet_listing_patient_folders_holds_out_whole_patients(tmp_path, blood_cell_images):
    """CheXpert/MURA-style paths in a sheet (``patient0007/study1/view2.jpg``) were split image by image: every
    validation patient had films in training too."""
    rows = ["Path,label"]
    for patient in range(30):
        for view in (1, 2):
            name = f"patient{patient:04d}/study1/view{view}.jpg"
            images(tmp_path / "data" / f"patient{patient:04d}" / "study1", blood_cell_images, [f"view{view}.jpg"])
            rows.append(f"{name},{'ab' if patient % 2 else 'no'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    splits = load_splits(tmp_path / "data", naming=read_labels_csv(str(tmp_path / "labels.csv")), val_split=0.2,
                         group_copies=None)
    patients = [{Path(path).parts[-3] for path in part.paths} for part in (splits.train, splits.val)]
    assert patients[1] and not patients[0] & patients[1] and "whole patients" in splits.held_out


def test_rows_naming_images_that_are_not_there_are_counted_in_one_line(tmp_path, blood_cell_images, caplog):
    """Half a sheet's images missing (a partial copy) went without a word: training simply had half the data."""
    images(tmp_path / "images", blood_cell_images, [f"{i}.png" for i in range(20)])
    rows = "".join(f"{i}.png,{'ab' if i % 2 else 'no'}\n" for i in range(40))  # 20 listed images are not there
    (tmp_path / "labels.csv").write_text("image,label\n" + rows)
    with caplog.at_level(logging.WARNING):
        load_splits(tmp_path / "images", naming=read_labels_csv(str(tmp_path / "labels.csv")))
    assert (f"labels.csv: 20 of its 40 labelled rows name no image found in {tmp_path / 'images'}, left out "
            "(e.g. 20.png)") in caplog.messages


def test_isic_2020s_sheet_is_read_as_benign_against_malignant_and_the_archives_by_diagnosis(tmp_path, caplog):
    """ISIC 2020's diagnosis is "unknown" for most rows: read first, "unknown" was a class of its own. The ISIC
    Archive's export has both columns too, with real diagnoses: those stay the labels."""
    (tmp_path / "train.csv").write_text(
        "image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_malignant,target\n"
        "ISIC_2637011,IP_7279968,male,45.0,head/neck,unknown,benign,0\n"
        "ISIC_0015720,IP_7279968,male,45.0,head/neck,unknown,benign,0\n"
        "ISIC_0015719,IP_3075186,female,45.0,upper extremity,melanoma,malignant,1\n")
    with caplog.at_level(logging.WARNING):
        naming = read_labels_csv(str(tmp_path / "train.csv"))
    assert naming.label(Path("ISIC_2637011.jpg")) == "benign" and naming.label(Path("ISIC_0015719.jpg")) == "malignant"
    assert naming.group(Path("ISIC_2637011.jpg")) == "IP_7279968"
    assert "its diagnosis column is unknown for most rows: labels read from benign_malignant" in caplog.text
    (tmp_path / "metadata.csv").write_text("isic_id,benign_malignant,diagnosis\nISIC_0000000,benign,nevus\n"
                                           "ISIC_0000001,malignant,melanoma\n")
    assert read_labels_csv(str(tmp_path / "metadata.csv")).label(Path("ISIC_0000000.jpg")) == "nevus"
