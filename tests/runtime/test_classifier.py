"""The Python API: one session, the model's own labels and preprocessing, batches that change nothing."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from medclf.runtime import DEFAULT_MODEL, Classifier, ModelCard, ModelCardError, Prediction, Preprocess, load_image
from tests.onnx_graphs import brightness_model, foreign_graph

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="the packaged default model is missing")


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier()


def test_the_default_model_is_the_blood_cell_classifier_with_its_test_metrics(classifier):
    assert classifier.labels == ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL")
    assert classifier.card.metrics["test"]["images"] == 2487
    assert DEFAULT_MODEL.stat().st_size <= 12_000_000  # 8.9 MB of network, 2.2 MB of its unfamiliarity output


def test_probabilities_are_a_distribution_and_do_not_depend_on_the_batch(classifier, blood_cell_images):
    images = np.stack([load_image(p, classifier.card.preprocess) for p in blood_cell_images])
    together = classifier.predict(images)
    alone = np.concatenate([classifier.predict(image[None]) for image in images])
    assert together.shape == (len(images), 4) and together.dtype == np.float32
    np.testing.assert_allclose(together.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_assess_answers_probabilities_and_unfamiliarity_from_one_pass(classifier, blood_cell_images, tmp_path):
    images = np.stack([load_image(p, classifier.card.preprocess) for p in blood_cell_images])
    probabilities, unfamiliarity = classifier.assess(images)
    np.testing.assert_allclose(probabilities, classifier.predict(images), atol=1e-6)
    assert unfamiliarity.shape == (len(images),)
    np.testing.assert_allclose(unfamiliarity, classifier.unfamiliarity(images), rtol=1e-6)
    card = ModelCard(("dark", "bright"), Preprocess(8, 8, "grey"))
    plain = Classifier(brightness_model(tmp_path / "plain.onnx", card))
    assert plain.answer_outputs == ["probabilities"]
    assert plain.assess(np.zeros((2, 8, 8, 1), np.uint8))[1] is None


@pytest.mark.parametrize("unfamiliarity", [float("inf"), float("nan")])
def test_a_distance_that_overflowed_is_unlike_training_and_its_json_line_stays_json(unfamiliarity):
    answer = Prediction("smear.png", "MONOCYTE", 0.6, (("MONOCYTE", 0.6),), unfamiliarity=unfamiliarity)
    assert answer.unlike_training
    line = json.loads(json.dumps(answer.to_dict(), allow_nan=False))
    assert line["unfamiliarity"] is None and line["unlike_training"] is True


def test_an_image_the_model_answers_nan_for_is_an_error_not_a_call_of_the_first_class(tmp_path):
    """An FP16 file can overflow: its NaN probabilities were called as the first label, printed as bare NaN in
    --json (which JSON readers refuse) and the run exited 0."""
    card = ModelCard(("dark", "bright"), Preprocess(8, 8, "grey"))
    model = brightness_model(tmp_path / "nan.onnx", card, nan_when_black=True)
    black, grey = tmp_path / "black.png", tmp_path / "grey.png"
    cv2.imwrite(str(black), np.zeros((8, 8), np.uint8))
    cv2.imwrite(str(grey), np.full((8, 8), 128, np.uint8))
    answers = list(Classifier(model).classify([black, grey]))
    assert answers[0].error.startswith("the model answered NaN or infinity for it") and answers[0].label is None
    assert answers[1].error is None and answers[1].label == "bright"
    assert json.dumps(answers[0].to_dict(), allow_nan=False)


def test_a_batch_the_model_fails_on_is_run_in_halves_and_only_what_still_fails_is_an_error(tmp_path):
    """Out of memory on a batch (a busy GPU, ``ulimit -v``) ended the run in onnxruntime's traceback, every
    answer lost. Here onnxruntime fails on odd batches: of 3, the 1 fails alone and the 2 are answered."""
    card = ModelCard(("dark", "bright"), Preprocess(8, 8, "grey"))
    model = brightness_model(tmp_path / "even.onnx", card, even_batches_only=True)
    paths = []
    for n, level in enumerate((10, 250, 240, 20, 30, 230)):
        paths.append(tmp_path / f"{n}.png")
        cv2.imwrite(str(paths[-1]), np.full((8, 8), level, np.uint8))
    answers = list(Classifier(model).classify(paths, batch_size=3))
    assert [answer.path for answer in answers] == list(map(str, paths))
    assert [answer.label for answer in answers] == [None, "bright", "bright", None, "dark", "bright"]
    assert answers[0].error.startswith("the model failed on it ([ONNXRuntimeError]") and "Reshape" in answers[0].error
    assert list(Classifier(model).classify(paths[1:5], batch_size=4))[0].label == "bright"  # even: one run


def test_a_model_card_naming_more_or_fewer_classes_than_the_model_has_is_refused_at_load(tmp_path):
    """One label for two probabilities was an IndexError traceback mid-run; three were served, naming a class
    the model never scores."""
    path = brightness_model(tmp_path / "3.onnx", ModelCard(("a", "b", "c"), Preprocess(8, 8, "grey")))
    with pytest.raises(ModelCardError, match="names 3 classes and the model gives probabilities for 2"):
        Classifier(path)
    path = brightness_model(tmp_path / "1.onnx", ModelCard(("one",), Preprocess(8, 8, "grey")))
    with pytest.raises(ModelCardError, match="medclf.labels names 1 class; a classifier needs at least two"):
        Classifier(path)


@pytest.mark.parametrize("input_name, float_input, shape, output, said", [
    ("input", True, ["N", 3, 8, 8], "probabilities", "takes 'input'; a medclf model takes one input, 'image'"),
    ("image", True, ["N", 8, 8, 3], "probabilities", "its input is float [N, 8x8x3], and its model card says uint8"),
    ("image", False, ["N", 16, 16, 3], "probabilities", "its input is uint8 [N, 16x16x3], and its model card says "
                                                          "uint8 images of 8x8x3"),
    ("image", False, ["N", 8, 8, 3], "Identity:0", "has no output 'probabilities', which its model card names"),
])
def test_a_graph_unlike_its_model_card_is_refused_at_load_not_at_its_first_batch(tmp_path, input_name, float_input,
                                                                                shape, output, said):
    """A file medclf did not write, carded by hand (a float32 NCHW input, Keras' ``Identity:0`` output, another
    size): each failed at its first batch in onnxruntime's traceback, every answer lost, exit 1 not 2."""
    from onnx import TensorProto

    card = ModelCard(("a", "b"), Preprocess(8, 8))
    path = foreign_graph(tmp_path / "foreign.onnx", card, input_name,
                         TensorProto.FLOAT if float_input else TensorProto.UINT8, shape, output)
    with pytest.raises(ModelCardError, match=f"^{re.escape(path)}: {re.escape(said)}"):
        Classifier(path)


@pytest.mark.parametrize("top_k", [0, -1])
def test_top_k_below_one_is_refused(classifier, blood_cell_images, top_k):
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        next(classifier.classify(blood_cell_images, top_k=top_k))


def test_many_images_run_in_batches_of_bounded_pixels_unless_a_batch_size_is_given(blood_cell_images,
                                                                                     monkeypatch):
    """A call keeps every image's activations until it ends: 745 chest films at 352 px took 24 GB at once."""
    classifier = Classifier()
    images = np.stack([load_image(p, classifier.card.preprocess) for p in blood_cell_images[:5]])
    seen, backend = [], classifier.backend

    class Recording:  # the real session runs; this only notes how many images each call gave it
        most_images = None

        def run(self, names, batch):
            seen.append(len(batch))
            return backend.run(names, batch)

    monkeypatch.setattr(classifier, "backend", Recording())
    monkeypatch.setattr("medclf.runtime.classifier.MAX_BATCH_PIXELS", 2 * images.shape[1] * images.shape[2])
    bounded = classifier.predict(images)
    assert seen == [2, 2, 1]
    seen.clear()
    np.testing.assert_allclose(classifier.predict(images, batch_size=5), bounded, atol=1e-5)
    assert seen == [5]


def test_classify_keeps_input_order_around_failures(classifier, blood_cell_images, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    paths = [str(blood_cell_images[0]), str(broken), str(blood_cell_images[1])]
    results = list(classifier.classify(paths, top_k=2, batch_size=2))
    assert [r.path for r in results] == paths
    assert results[1].error and results[1].label is None
    assert results[0].error is None and len(results[0].top_k) == 2


def test_a_bad_file_does_not_cut_a_batch_short(classifier, blood_cell_images, tmp_path, monkeypatch):
    """Every third file bad made runs of 2 images instead of 32: nothing on a CPU, a GPU's throughput."""
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    paths = [str(path) for image in blood_cell_images[:6] for path in (image, broken)]
    seen, run = [], classifier.outputs
    monkeypatch.setattr(classifier, "outputs", lambda names, images, *rest: seen.append(len(images)) or
                        run(names, images, *rest))
    results = list(classifier.classify(paths, batch_size=4))
    assert [r.path for r in results] == paths and [r.error is None for r in results] == [True, False] * 6
    assert seen == [4, 2]


def test_a_folder_given_to_classify_is_said_to_be_a_folder_of_images_to_list(classifier, blood_cell_images):
    """classify takes files; a folder of images was "no image in this folder (it holds 40 .jpg files)"."""
    from medclf.runtime.inputs import expand_inputs

    folder = str(blood_cell_images[0].parent)
    (result,) = classifier.classify([folder])
    assert result.error == f"a folder of {len(list(expand_inputs([folder])))} images, not an image: list " \
        "its files (medclf.runtime.inputs.expand_inputs lists them as medclf-run does)"


def test_the_model_is_right_on_most_unseen_test_images(classifier, blood_cells):
    paths = [str(p) for c in sorted((blood_cells / "TEST").iterdir()) for p in sorted(c.iterdir())[::5]]
    predicted = [r.label for r in classifier.classify(paths, batch_size=32)]
    truth = [p.split("/")[-2] for p in paths]
    assert np.mean([p == t for p, t in zip(predicted, truth)]) >= 0.8


def test_the_default_model_says_when_an_image_is_not_a_white_blood_cell(classifier, blood_cells, chest_xray,
                                                                      cataract):
    """A chest film or an eye photo given to the blood-cell model gets a cell's name all the same; its
    ``unfamiliarity`` output is what tells the user (threshold: 1 in 200 held-out smears beyond 1)."""
    assert classifier.says_unfamiliar
    others = [str(p) for p in sorted((chest_xray / "test").glob("*/*.jpeg"))[::40]]
    others += [str(p) for p in sorted((cataract / "normal").iterdir())[:10]]
    smears = [str(p) for c in sorted((blood_cells / "TEST").iterdir()) for p in sorted(c.iterdir())[::10]]
    flagged = {name: np.mean([r.unlike_training for r in classifier.classify(paths, batch_size=32)])
               for name, paths in (("others", others), ("smears", smears))}
    assert flagged["others"] == 1.0 and flagged["smears"] <= 0.05


def test_smears_saved_as_12_bit_values_in_16_bit_pngs_get_the_jpegs_answers(classifier, blood_cell_images,
                                                                           tmp_path):
    """As a camera's raw 12-bit values written to PNG (0-4095 of 65535, no tag saying so): read as 12-bit, each
    gets its JPEG's answer exactly (the same 8-bit pixels); read as 16-bit, they were near-black images, unlike
    any smear."""
    raw = []
    for path in blood_cell_images:
        bgr = cv2.imread(str(path))
        raw.append(tmp_path / f"{Path(path).stem}.png")
        cv2.imwrite(str(raw[-1]), np.rint(bgr * (4095 / 255)).astype(np.uint16))
    jpegs = list(classifier.classify([str(p) for p in blood_cell_images]))
    pngs = list(classifier.classify([str(p) for p in raw]))
    assert [p.label for p in pngs] == [p.label for p in jpegs]
    assert not any(p.unlike_training for p in pngs)
    np.testing.assert_allclose([p.probability for p in pngs], [p.probability for p in jpegs], atol=1e-6)


def test_the_packaged_int8_file_is_the_same_model_in_int8(classifier, blood_cells):
    """``model.int8.onnx`` ships beside the default model: same labels and preprocessing, int8 kernels, and the
    same answers on nearly every unseen TEST image (verified 99.6% on held-out cell images, 99.4% on all of TEST
    on the VNNI CPU it was made on; CPUs without VNNI round int8 differently, hence the margin), and the same
    unfamiliarity output, kept float."""
    int8 = Classifier(DEFAULT_MODEL.with_name("model.int8.onnx"))
    assert int8.card.precision == "int8" and int8.labels == classifier.labels
    assert int8.card.preprocess == classifier.card.preprocess
    paths = [str(p) for c in sorted((blood_cells / "TEST").iterdir()) for p in sorted(c.iterdir())[::10]]
    images = np.stack([load_image(p, classifier.card.preprocess) for p in paths])
    agreement = np.mean(int8.predict(images).argmax(1) == classifier.predict(images).argmax(1))
    assert agreement >= 0.95
    np.testing.assert_allclose(int8.unfamiliarity(images), classifier.unfamiliarity(images), rtol=0.15, atol=0.05)


def test_one_path_given_alone_is_one_file_and_answers_name_it_as_a_string(blood_cell_images):
    """A bare string was read letter by letter ("/" among them: the disk walked); a Path's answer held a PosixPath
    that json.dumps refused."""
    classifier = Classifier()
    (alone,) = classifier.classify(str(blood_cell_images[0]))
    (as_path,) = classifier.classify(blood_cell_images[0])
    (in_list,) = classifier.classify([blood_cell_images[0]])
    assert alone.error is None and alone.label == as_path.label == in_list.label
    assert alone.path == as_path.path == in_list.path == str(blood_cell_images[0])
    json.dumps(in_list.to_dict())
    (as_bytes,) = classifier.classify(os.fsencode(blood_cell_images[0]))  # was "TypeError ... not int"
    assert as_bytes.path == str(blood_cell_images[0]) and as_bytes.label == alone.label


def test_a_pattern_given_to_classify_is_said_to_be_one_to_expand(classifier, blood_cell_images):
    """It said "no file matches this pattern" of a pattern that matched files."""
    pattern = str(blood_cell_images[0].parent / "*.jpeg")
    (answer,) = classifier.classify(pattern)
    assert "a pattern matching" in answer.error and "expand_inputs" in answer.error


def test_an_upload_in_memory_gets_the_files_own_answer(classifier, blood_cell_images, tmp_path):
    """A web service holds bytes, not a file: decode_image + resize skipped a large JPEG's scaled decoding."""
    from medclf.runtime import image_from_bytes

    big = tmp_path / "big.jpeg"
    cell = cv2.imread(str(blood_cell_images[0]))
    cv2.imwrite(str(big), cv2.resize(cell, (1600, 1200), interpolation=cv2.INTER_CUBIC))
    spec = dataclasses.replace(classifier.card.preprocess, shrink_jpeg=True, shrink_all=True)
    np.testing.assert_array_equal(image_from_bytes(big.read_bytes(), spec), load_image(big, spec))


@pytest.mark.parametrize("images, said", [
    (np.zeros((128, 128, 3), np.uint8), "not uint8 [128, 128, 3]"),  # one image without its batch axis
    (np.zeros((2, 128, 128), np.uint8), "not uint8 [2, 128, 128]"),  # grey, no channel axis: was a TypeError
    (np.zeros((2, 128, 128, 3), np.float32), "not float32 [2, 128, 128, 3]"),
    ([[0]], "not list"),
])


def test_an_array_the_model_cannot_take_is_refused_saying_what_it_takes(classifier, images, said):
    with pytest.raises(ValueError, match=r"takes uint8 images \[N, 128, 128, 3\] \(RGB, as load_image gives them\), "
                                         + re.escape(said)):
        classifier.predict(images)
