"""Labelled images for verification and benchmarks: every file accounted for, class names matched as training
matches them."""

from __future__ import annotations

import shutil

import cv2

from medclf.export.labelled_images import folder_images, load_labelled
from medclf.runtime import Classifier


def test_unreadable_files_are_named_and_class_folders_match_in_any_case(blood_cell_images, tmp_path, capsys):
    card = Classifier().card
    broken = tmp_path / "broken.jpeg"
    broken.write_text("not an image")
    paths = [str(blood_cell_images[0]), str(broken), str(blood_cell_images[1])]
    images, labels = load_labelled(paths, ["eosinophil", "eosinophil", "Neutrophil"], card)
    assert len(images) == 2 and labels.tolist() == [card.labels.index("EOSINOPHIL"), card.labels.index("NEUTROPHIL")]
    assert capsys.readouterr().err == f"skipping {broken}: a text file, not an image\n"


def test_classes_the_model_does_not_know_are_said_and_leave_accuracy_unmeasured(blood_cell_images, capsys):
    images, labels = load_labelled([str(blood_cell_images[0])], ["cataract"], Classifier().card)
    assert len(images) == 1 and labels is None
    assert capsys.readouterr().err.startswith("accuracy not measured: cataract is not among the model's classes")


def test_a_folder_names_each_image_by_its_class_folder_at_any_depth_and_leaves_masks_out(blood_cell_images, tmp_path,
                                                                                          capsys):
    """As training reads it: ``NORMAL/patient12/IM0001`` is NORMAL; ``x_mask.png`` beside ``x.png`` outlines x."""
    (tmp_path / "EOSINOPHIL" / "patient12").mkdir(parents=True)
    (tmp_path / "NEUTROPHIL").mkdir()
    shutil.copy(blood_cell_images[0], tmp_path / "EOSINOPHIL" / "patient12" / "IM0001.jpeg")
    shutil.copy(blood_cell_images[1], tmp_path / "NEUTROPHIL" / "cell 1.jpeg")
    outline = (cv2.imread(str(blood_cell_images[1]), cv2.IMREAD_GRAYSCALE) < 128).astype("uint8") * 255
    cv2.imwrite(str(tmp_path / "NEUTROPHIL" / "cell 1_mask.png"), outline)
    paths, names = folder_images(tmp_path)
    assert [p[len(str(tmp_path)) + 1:] for p in paths] == ["EOSINOPHIL/patient12/IM0001.jpeg", "NEUTROPHIL/cell 1.jpeg"]
    assert names == ["EOSINOPHIL/patient12", "NEUTROPHIL"]
    assert capsys.readouterr().err == (f"{tmp_path}: 1 segmentation mask left out (e.g. NEUTROPHIL/cell 1_mask.png): "
                                         "outlines of the images beside them\n")
    assert folder_images(tmp_path / "NEUTROPHIL")[1] == ["NEUTROPHIL"]  # one class's folder: its own name
    assert load_labelled(paths, names, Classifier().card)[1].tolist() == [0, 3]


def test_a_class_is_the_first_folder_that_names_one_of_the_models_classes(blood_cell_images):
    """Layouts training reads below their top folders — numbered parts (``fold_0/EOSINOPHIL``), finer classes
    (``granulocytes/NEUTROPHIL``) — label their images by the folder that names the model's class."""
    paths = [str(blood_cell_images[0])] * 3
    names = ["fold_0/EOSINOPHIL", "granulocytes/neutrophil", "fold_1/LYMPHOCYTE/patient3"]
    assert load_labelled(paths, names, Classifier().card)[1].tolist() == [0, 3, 1]
