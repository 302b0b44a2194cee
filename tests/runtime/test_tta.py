"""Test-time augmentation: the views of an image, and the packaged model's probabilities averaged over them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from medclf.runtime import Classifier, load_image
from medclf.runtime.modelcard import FAMILIARITY_NAME, OUTPUT_NAME
from medclf.runtime.tta import VIEWS, averaged, views

SQUARE = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)


def test_dihedral_views_of_a_square_image_are_its_eight_mirrors_and_turns_itself_first():
    found = views(SQUARE, "dihedral")
    assert len(found) == 8 and found[0] is SQUARE
    assert len({view.tobytes() for view in found}) == 8  # all different, so none is counted twice
    assert all(view.shape == SQUARE.shape for view in found)
    assert any(np.array_equal(view, SQUARE[:, :, ::-1]) for view in found)  # the mirror image
    assert any(np.array_equal(view, np.rot90(SQUARE, 1, axes=(1, 2))) for view in found)  # a quarter turn


def test_a_non_square_image_keeps_its_shape_in_every_view_and_flip_is_the_image_and_its_mirror():
    wide = SQUARE[:, :3]
    found = views(wide, "dihedral")
    assert len(found) == 4 and all(view.shape == wide.shape for view in found)
    assert len({view.tobytes() for view in found}) == 4
    image, mirror = views(SQUARE, "flip")
    assert image is SQUARE and np.array_equal(mirror, SQUARE[:, :, ::-1])
    with pytest.raises(ValueError, match="choose one of flip, dihedral"):
        views(SQUARE, "rotate")


def test_averaged_is_the_mean_of_a_function_over_the_views():
    brightness = averaged(lambda x: x.reshape(len(x), -1)[:, :1].astype(float), SQUARE, "dihedral")
    corners = [SQUARE[:, 0, 0, 0], SQUARE[:, 0, -1, 0], SQUARE[:, -1, 0, 0], SQUARE[:, -1, -1, 0]]
    assert np.allclose(brightness[:, 0], np.mean(corners, axis=0))  # each corner comes to the top left twice


def test_the_classifier_averages_the_probabilities_and_keeps_the_images_own_unfamiliarity(blood_cell_images):
    plain = Classifier()
    images = np.stack([load_image(path, plain.card.preprocess) for path in blood_cell_images])
    tta = Classifier(tta="dihedral")
    probabilities, unfamiliarity = tta.outputs([OUTPUT_NAME, FAMILIARITY_NAME], images)
    by_hand = np.mean([plain.predict(np.ascontiguousarray(view)) for view in views(images, "dihedral")], axis=0)
    np.testing.assert_allclose(probabilities, by_hand, atol=1e-6)
    assert not np.allclose(probabilities, plain.predict(images), atol=1e-3)  # the views do change the answer
    np.testing.assert_allclose(unfamiliarity, plain.unfamiliarity(images)[:, None], atol=1e-6)
    np.testing.assert_allclose(tta.predict(images, batch_size=3), probabilities, atol=1e-6)  # any batching
    with pytest.raises(ValueError, match="test-time augmentation 'turns'"):
        Classifier(tta="turns")


def test_medclf_run_tta_serves_the_averaged_calls_and_refuses_an_unknown_kind(blood_cell_images):
    done = subprocess.run([sys.executable, "-m", "medclf.runtime.cli", "--json", "--tta", "flip",
                           *map(str, blood_cell_images)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "probabilities averaged over test-time views: the image and its mirror image (2 views)" in done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert all(answer["tta"] == "flip" for answer in answers)  # a kept result says how it was made
    served = [answer["probability"] for answer in answers]
    classifier = Classifier(tta="flip")
    images = np.stack([load_image(path, classifier.card.preprocess) for path in blood_cell_images])
    assert np.allclose(served, classifier.predict(images).max(axis=1), atol=1e-5)
    refused = subprocess.run([sys.executable, "-m", "medclf.runtime.cli", "--tta", "turns", str(blood_cell_images[0])],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "invalid choice: 'turns'" in refused.stderr
    assert set(VIEWS) == {"flip", "dihedral"}
