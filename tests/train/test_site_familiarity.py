"""``medclf calibrate --familiarity-from-site``: a site whose images look otherwise makes them the reference of the
model's unfamiliarity, depth by depth, without letting through what the model must still refuse."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from medclf.runtime import DEFAULT_MODEL, Classifier, ModelCard, Preprocess, load_image
from medclf.train.calibrate import calibrate_site
from medclf.train.cli import app
from medclf.export.depth_weights import levels_tensor, outputs_with_ratios, with_depth_weights
from medclf.train.site_familiarity import SITE_PREFIX, site_familiarity
from tests.onnx_graphs import brightness_model

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="the packaged default model is missing")


def brighter_smears(blood_cells, folder, offset: int, every: int = 10):
    """A site whose microscope makes the real TEST smears 30% brighter: every ``every``-th, from ``offset``."""
    for cls in sorted((blood_cells / "TEST").iterdir()):
        (folder / cls.name).mkdir(parents=True)
        for path in sorted(cls.iterdir())[offset::every]:
            brighter = np.clip(cv2.imread(str(path)).astype(np.float32) * 1.3, 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / cls.name / path.name), brighter)
    return folder


def flagged(classifier: Classifier, paths) -> float:
    images = np.stack([load_image(str(p), classifier.card.preprocess) for p in paths])
    return float(np.mean(classifier.unfamiliarity(images) > 1))


def test_a_brighter_site_sets_each_depth_again_and_chest_films_are_still_refused(blood_cells, chest_xray, tmp_path):
    site = brighter_smears(blood_cells, tmp_path / "site", 0)
    others = sorted(brighter_smears(blood_cells, tmp_path / "others", 5).glob("*/*"))
    films = sorted((chest_xray / "test").glob("*/*.jpeg"))[::40]
    copy = tmp_path / "model.site.onnx"
    result = CliRunner().invoke(app, ["calibrate", str(DEFAULT_MODEL), str(site), "--out", str(copy),
                                      "--no-group-copies", "--familiarity-from-site"], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert "lie beyond 1, unlike the training images" in result.output and "depth by depth" in result.output

    as_trained, at_site = Classifier(), Classifier(copy)
    assert flagged(as_trained, others) > 0.5  # the site's look alone sets off the warning on most smears
    assert flagged(at_site, others) <= 0.03  # its other smears: about 1 in 200, as at the training site
    assert flagged(at_site, films) == 1.0  # one factor for the whole output let most of these through
    record = json.loads(copy.with_suffix(".json").read_text())["familiarity"]
    assert record["beyond"] > 0.5 * record["images"] and len(record["weights"]) == 5
    assert at_site.card.metrics["site"]["familiarity"] == record
    assert at_site.card.outputs["unfamiliarity"].startswith("how unlike the images of site each image is")
    done = subprocess.run([sys.executable, "-m", "medclf.runtime.cli", "--model", str(copy), str(films[0])],
                          capture_output=True, text=True, timeout=120)
    assert "unlike the images of site, where this copy was set" in done.stderr  # what beyond 1 now means
    again = CliRunner().invoke(app, ["calibrate", str(copy), str(site), "--out", str(tmp_path / "again.onnx"),
                                     "--no-group-copies"], terminal_width=400)  # the copy calibrated again
    assert "lie beyond 1, unlike the images of site, where this file's was set" in again.output, again.output
    assert Classifier(tmp_path / "again.onnx").card.metrics["site"]["familiarity_set_at"] == "site"  # it still is
    done = subprocess.run([sys.executable, "-m", "medclf.runtime.cli", "--model", str(tmp_path / "again.onnx"),
                           str(films[0])], capture_output=True, text=True, timeout=120)
    assert "unlike the images of site, where this copy was set" in done.stderr


def test_without_asking_the_copy_keeps_the_training_sites_unfamiliarity_and_says_how_far_the_site_is(
        blood_cells, tmp_path):
    site = brighter_smears(blood_cells, tmp_path / "site", 0, every=20)
    model = DEFAULT_MODEL.with_name("model.int8.onnx")  # any precision: the ratios are float in every file
    result = CliRunner().invoke(app, ["calibrate", str(model), str(site), "--out", str(tmp_path / "copy.onnx"),
                                      "--no-group-copies"], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert "--familiarity-from-site takes them as the reference" in result.output  # most are beyond 1
    images = np.stack([load_image(str(p), Classifier(model).card.preprocess) for p in sorted(site.glob("*/*"))[:32]])
    np.testing.assert_array_equal(Classifier(tmp_path / "copy.onnx").unfamiliarity(images),
                                  Classifier(model).unfamiliarity(images))


def test_the_files_unfamiliarity_is_the_largest_of_the_ratios_read_and_a_copy_set_again_on_its_site_moves_no_more(
        blood_cells, tmp_path):
    """The ratios the site's weights act on are the file's own, and setting a copy again on the same images
    finds it already set: weights of about 1 (a site can calibrate a calibrated copy)."""
    import onnx

    card = Classifier().card
    images = np.stack([load_image(str(p), card.preprocess) for c in sorted((blood_cells / "TEST").iterdir())
                       for p in sorted(c.iterdir())[::20]])
    scores = outputs_with_ratios(DEFAULT_MODEL)(images)
    loaded = onnx.load(str(DEFAULT_MODEL))  # a model already loaded gives the same and keeps its own outputs
    np.testing.assert_array_equal(outputs_with_ratios(loaded)(images), scores)
    assert [o.name for o in loaded.graph.output] == [o.name for o in onnx.load(str(DEFAULT_MODEL)).graph.output]
    levels = scores[:, len(card.labels):]
    np.testing.assert_allclose(levels.max(axis=1), Classifier().unfamiliarity(images), rtol=1e-6)
    weights = site_familiarity(levels, card, True, "site").weights
    copy = tmp_path / "copy.onnx"
    onnx.save(with_depth_weights(onnx.load(str(DEFAULT_MODEL)), weights, SITE_PREFIX), str(copy))
    again = site_familiarity(outputs_with_ratios(copy)(images)[:, len(card.labels):], card, True, "site")
    np.testing.assert_allclose(again.weights, 1.0, rtol=1e-5)
    assert levels_tensor(onnx.load(str(copy))).startswith("medclf_site")


def test_the_weights_put_each_depth_then_the_largest_at_the_quantile():
    rng = np.random.default_rng(0)
    levels = rng.lognormal(size=(1000, 4)) * [1, 3, 0.5, 10]
    card = ModelCard(labels=("a", "b"), preprocess=Preprocess(8, 8), metrics={"familiarity": {"quantile": 0.99}})
    familiarity = site_familiarity(levels, card, True, "site")
    weighted = levels * familiarity.weights
    assert np.quantile(weighted.max(axis=1), 0.99) == pytest.approx(1.0)
    depth = np.quantile(levels, 0.99, axis=0)  # each depth over its own quantile, before the largest's
    np.testing.assert_allclose(weighted / (levels / depth), weighted[0, 0] / (levels[0, 0] / depth[0]))
    assert familiarity.beyond == int(np.sum(levels.max(axis=1) > 1)) and familiarity.quantile == 0.99


def test_an_image_whose_level_came_out_nan_counts_as_beyond_and_is_no_reference_for_the_site():
    card = ModelCard(labels=("a", "b"), preprocess=Preprocess(8, 8))
    levels = np.array([[0.5, 0.2], [np.nan, 0.3], [0.1, 2.0], [0.9, 0.9]])
    assert site_familiarity(levels, card, False, "site").beyond == 2  # as the runtime flags it
    site = np.random.default_rng(0).lognormal(size=(200, 2))
    with_nan = np.vstack([site, [[np.nan, 1.0]]])
    assert site_familiarity(with_nan, card, True, "site").weights == site_familiarity(site, card, True, "site").weights
    with pytest.raises(ValueError, match="site: 63 images with finite levels; .* needs at least 64"):
        site_familiarity(np.vstack([site[:63], [[np.nan, 1.0]]]), card, True, "site")


def test_a_model_without_the_output_or_a_site_too_small_is_refused_by_name(blood_cells, tmp_path):
    card = ModelCard(labels=("EOSINOPHIL", "LYMPHOCYTE"), preprocess=Preprocess(8, 8, "grey"))  # as it scores
    plain = brightness_model(tmp_path / "plain.onnx", card)
    with pytest.raises(ValueError, match="plain.onnx: exported without the unfamiliarity output"):
        calibrate_site(plain, blood_cells / "TEST", familiarity_from_site=True)
    with pytest.raises(ValueError, match="site: 40 images; .* needs at least 64"):
        site_familiarity(np.ones((40, 5)), Classifier().card, True, "site")
