"""Labelled images for verification and benchmarks: every file accounted for, class names matched as training
matches them."""

from __future__ import annotations

from medclf.export.labelled_images import load_labelled
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
