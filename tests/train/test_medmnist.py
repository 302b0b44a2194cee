"""MedMNIST's own download (``pneumoniamnist.npz``) trains and scores as the pre-split folder it stands for."""

from __future__ import annotations

import json
import zipfile

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from medclf.train.cli import app
from medclf.train.layout import DatasetError
from medclf.train.medmnist import unpacked
from medclf.train.splits import load_splits


@pytest.fixture(scope="module")
def films(chest_xray) -> dict[str, np.ndarray]:
    """Real chest films at 28x28 grey, in MedMNIST's arrays: 12 / 4 / 4 of each class, labels (N, 1)."""
    arrays = {}
    for split, chosen in (("train", slice(0, 12)), ("val", slice(12, 16)), ("test", slice(16, 20))):
        paths = [path for name in ("NORMAL", "PNEUMONIA")
                 for path in sorted((chest_xray / "train" / name).iterdir())[chosen]]
        images = [cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (28, 28), interpolation=cv2.INTER_AREA)
                  for path in paths]
        arrays[f"{split}_images"] = np.stack(images)
        arrays[f"{split}_labels"] = np.repeat(np.uint8([0, 1]), len(images) // 2)[:, None]
    return arrays


def test_the_arrays_are_written_once_as_class_folders_named_as_medmnist_names_them(films, tmp_path, caplog):
    np.savez_compressed(tmp_path / "pneumoniamnist.npz", **films)
    with caplog.at_level("WARNING"):
        folder = unpacked(tmp_path / "pneumoniamnist.npz", tmp_path / "cache")
    assert "written once as PNG files" in caplog.text
    splits = load_splits(folder)
    assert splits.summary() == ("2 classes (normal 12, pneumonia 12): 24 training images, 8 validation "
                                "(val/ folder), 8 test")
    first = cv2.imread(str(folder / "test" / "normal" / "test0.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(first, films["test_images"][0])  # lossless: the pixels are MedMNIST's
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert unpacked(tmp_path / "pneumoniamnist.npz", tmp_path / "cache") == folder
    assert not caplog.text  # found again, not written again
    assert [path.name for path in folder.parent.iterdir()] == [folder.name]  # no half-written folder left
    for image in list((folder / "train" / "pneumonia").iterdir())[:5]:  # taken out of the cache since
        image.unlink()
    with caplog.at_level("WARNING"):
        assert unpacked(tmp_path / "pneumoniamnist.npz", tmp_path / "cache") == folder
    assert "images missing since it was written" in caplog.text and len(load_splits(folder).train) == 24


def test_colour_sets_keep_their_colours_and_unknown_sets_name_classes_by_number(films, tmp_path):
    colour = {key: np.stack([value, value // 2, value // 3], axis=-1) if key.endswith("images") else value
              for key, value in films.items()}
    np.savez(tmp_path / "mysetmnist_64.npz", **colour)  # uncompressed, and not a set MedMNIST names
    folder = unpacked(tmp_path / "mysetmnist_64.npz", tmp_path / "cache")
    assert sorted(path.name for path in (folder / "train").iterdir()) == ["0", "1"]
    written = cv2.imread(str(folder / "train" / "1" / "train12.png"))[..., ::-1]
    assert np.array_equal(written, colour["train_images"][12])


def test_what_medclf_cannot_learn_from_is_refused_in_one_line(films, tmp_path):
    multi = dict(films, train_labels=np.zeros((24, 14), np.uint8))  # ChestMNIST: 14 findings a row
    np.savez(tmp_path / "chestmnist.npz", **multi)
    with pytest.raises(DatasetError, match="train_labels give 14 labels per image"):
        unpacked(tmp_path / "chestmnist.npz", tmp_path / "cache")
    np.savez(tmp_path / "organmnist3d.npz", **dict(films, train_images=np.zeros((24, 28, 28, 28), np.uint8)))
    with pytest.raises(DatasetError, match="its 3-D volumes are not images medclf reads"):
        unpacked(tmp_path / "organmnist3d.npz", tmp_path / "cache")
    np.savez(tmp_path / "weights.npz", kernel=np.zeros(3))
    with pytest.raises(DatasetError, match="not a MedMNIST file"):
        unpacked(tmp_path / "weights.npz", tmp_path / "cache")
    assert not (tmp_path / "cache" / "medmnist").exists() or not any((tmp_path / "cache" / "medmnist").iterdir())
    with zipfile.ZipFile(tmp_path / "weights.npz") as archive:
        assert archive.namelist() == ["kernel.npy"]


def test_medclf_train_and_evaluate_take_the_npz_file_itself(films, tmp_path):
    np.savez_compressed(tmp_path / "pneumoniamnist.npz", **films)
    runner = CliRunner()
    trained = runner.invoke(app, ["train", str(tmp_path / "pneumoniamnist.npz"), "--out", str(tmp_path / "run"),
                                  "--arch", "small_cnn", "--image-size", "28", "--epochs", "1"])
    assert trained.exit_code == 0, trained.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["validation"]["images"] == 8 and metrics["test"]["images"] == 8
    scored = runner.invoke(app, ["evaluate", str(tmp_path / "run" / "model.keras"),
                                 str(tmp_path / "pneumoniamnist.npz"), "--out", str(tmp_path / "scored")])
    assert scored.exit_code == 0, scored.output
    assert json.loads((tmp_path / "scored" / "metrics.json").read_text())["images"] == 8  # the test arrays
    default = runner.invoke(app, ["evaluate", str(tmp_path / "run" / "model.keras"),
                                  str(tmp_path / "pneumoniamnist.npz")])
    assert default.exit_code == 0 and (tmp_path / "run" / "evaluation-pneumoniamnist" / "metrics.json").is_file()
    refused = runner.invoke(app, ["train", str(tmp_path / "run" / "metrics.json")])
    assert refused.exit_code == 2 and "not a folder of images, nor a MedMNIST .npz file" in refused.output


def test_another_datasets_npz_is_a_test_set_too(films, tmp_path, chest_xray):
    np.savez_compressed(tmp_path / "pneumoniamnist.npz", **films)
    folder = tmp_path / "films"
    for name in ("NORMAL", "PNEUMONIA"):  # the same classes, as a folder of a hospital's own films
        (folder / name).mkdir(parents=True)
        for path in sorted((chest_xray / "test" / name).iterdir())[:12]:
            (folder / name / path.name).symlink_to(path)
    trained = CliRunner().invoke(app, ["train", str(folder), "--out", str(tmp_path / "run"), "--arch", "small_cnn",
                                       "--image-size", "28", "--epochs", "1", "--val-split", "0.34",
                                       "--test", str(tmp_path / "pneumoniamnist.npz")])
    assert trained.exit_code == 0, trained.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]["images"] == 8  # its test arrays
