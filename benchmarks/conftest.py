"""Shared fixtures for the speed suites: the packaged model, real blood-cell TEST images, and the same network
in plain Keras, the way the seed tutorials run it (speed does not depend on the weights, so it is built with
random ones unless ``MEDCLF_KERAS_MODEL`` names the trained file)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medclf.runtime import DEFAULT_MODEL, Classifier, load_image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDCLF_SHARED", REPO.parent / "shared"))  # as in tests/conftest.py
TEST_IMAGES = SHARED / "data" / "blood-cells" / "TEST"
FOLDER_IMAGES = 256  # per folder benchmark: enough for a steady rate, short enough for CI

if "KERAS_HOME" not in os.environ and (SHARED / "keras").is_dir():
    os.environ["KERAS_HOME"] = str(SHARED / "keras")


def pytest_collection_modifyitems(items):
    """Keras baselines run last: once TensorFlow is loaded, its thread pools slow everything else in the process
    (medclf's folder rate fell from 84% to 72% of its bound), which would flatter the comparison. Only this
    folder's items: collected with tests/, those keep their order and do not skip for want of data."""
    here = Path(__file__).parent
    ours = [item for item in items if item.path.is_relative_to(here)]
    items.sort(key=lambda item: item.path.is_relative_to(here) and "keras" in item.name)
    if not (DEFAULT_MODEL.is_file() and TEST_IMAGES.is_dir()):
        skip = pytest.mark.skip(reason="needs the packaged model and ../shared/data/blood-cells")
        for item in ours:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def classifier() -> Classifier:
    return Classifier()


@pytest.fixture(scope="session")
def streaming_classifier() -> Classifier:
    """Set up as ``medclf-run`` sets it up for more than one input (its threads do not spin)."""
    return Classifier(streaming=True)


@pytest.fixture(scope="session")
def image_paths() -> list[str]:
    """FOLDER_IMAGES TEST images spread over the four classes, in a stable order."""
    paths = sorted(str(p) for p in TEST_IMAGES.glob("*/*.jpeg"))
    return [paths[i] for i in np.linspace(0, len(paths) - 1, FOLDER_IMAGES).astype(int)]


@pytest.fixture(scope="session")
def images(classifier, image_paths) -> np.ndarray:
    return np.stack([load_image(p, classifier.card.preprocess) for p in image_paths])


@pytest.fixture(scope="session")
def big_radiograph(tmp_path_factory) -> Path:
    """A real chest film blown up to a 2400x2000 JPEG: the size clinics export, where decoding dominates."""
    import cv2

    films = SHARED / "data" / "chest-xray" / "test" / "NORMAL"
    if not films.is_dir():
        pytest.skip(f"needs a real chest film: {films} is missing")
    film = cv2.imread(str(sorted(films.iterdir())[0]))
    path = tmp_path_factory.mktemp("radiograph") / "film.jpg"
    cv2.imwrite(str(path), cv2.resize(film, (2400, 2000), interpolation=cv2.INTER_CUBIC))
    return path


@pytest.fixture(scope="session")
def folder(image_paths, tmp_path_factory) -> Path:
    """The same images as a folder-per-class tree (links), as image_dataset_from_directory wants them."""
    root = tmp_path_factory.mktemp("folder")
    for path in map(Path, image_paths):
        (root / path.parent.name).mkdir(exist_ok=True)
        (root / path.parent.name / path.name).symlink_to(path)
    return root


@pytest.fixture(scope="session")
def keras_file(classifier, tmp_path_factory) -> Path:
    """The packaged model's network as a .keras file, what a seed script would ``load_model``."""
    if "MEDCLF_KERAS_MODEL" in os.environ:
        return Path(os.environ["MEDCLF_KERAS_MODEL"])
    pytest.importorskip("keras", reason="the Keras baseline needs medclf[train]")
    from medclf.train.architectures import get_architecture

    arch = classifier.card.metrics.get("training", {}).get("architecture", "mobilenet_v2")
    model = get_architecture(arch).build(classifier.card.preprocess.shape, len(classifier.labels), False)
    path = tmp_path_factory.mktemp("keras") / "model.keras"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def keras_model(keras_file):
    import keras

    return keras.models.load_model(keras_file, compile=False)
