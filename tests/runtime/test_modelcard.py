"""A model file's card, read from its metadata: what medclf wrote comes back the same, and what it cannot have
written (another tool's edit, a damaged file) is refused in one line rather than misread."""

from __future__ import annotations

import pytest

from medclf.runtime import ModelCard, ModelCardError, Preprocess

CARD = ModelCard(("NORMAL", "PNEUMONIA"), Preprocess(224, 224, "grey", clahe=True))


def test_a_card_comes_back_from_its_metadata_as_it_was_written():
    assert ModelCard.from_metadata(CARD.to_metadata()) == CARD


@pytest.mark.parametrize("key, value, reason", [
    ("medclf.labels", '"NORMAL"', "medclf.labels is str, not a JSON array"),  # was read as N, O, R, M, A, L
    ("medclf.metrics", "null", "medclf.metrics is NoneType, not a JSON object"),  # failed later, far from here
    ("medclf.outputs", "[]", "medclf.outputs is list, not a JSON object"),
    ("medclf.preprocess", '{"height": 8, "width": 8, "clahe": "false"}', "must be JSON true or false"),  # CLAHE on
])
def test_metadata_medclf_cannot_have_written_is_refused_in_one_line(key, value, reason):
    with pytest.raises(ModelCardError, match=f"m.onnx: malformed medclf metadata .*{reason}"):
        ModelCard.from_metadata(CARD.to_metadata() | {key: value}, "m.onnx")


@pytest.mark.parametrize("key, value, reason", [
    # the hand-written cards of models medclf did not train (a tutorial's Keras model, a file from elsewhere)
    ("medclf.preprocess", '{"height": 48, "width": 48, "scale": 0.0039}', "unknown preprocessing field 'scale'"),
    ("medclf.preprocess", '{"height": 48, "width": 48, "layout": "NCHW"}', "not {'layout': 'NCHW'}"),
    ("medclf.preprocess", '{"height": 100000, "width": 100000}', "image size must be 1 to 8192 pixels a side"),
    ("medclf.decision", '{"positive_class": "PNEUMONIA", "threshold": 50}', "from 0 to 1, not 50.0"),
    ("medclf.decision", '{"positive_class": "PNEUMONIA", "threshold": NaN}', "from 0 to 1, not nan"),
])
def test_a_card_that_would_answer_wrong_without_a_word_is_refused(key, value, reason):
    """A percentage threshold (50) called every film negative; a ``scale`` field was dropped, so the model saw
    pixels 255 times brighter than in training; a 100000-px size allocated 120 GB per image, blamed on it."""
    with pytest.raises(ModelCardError, match=f"m.onnx: malformed medclf metadata .*{reason}"):
        ModelCard.from_metadata(CARD.to_metadata() | {key: value}, "m.onnx")


@pytest.mark.parametrize("labels, reason", [
    ('["PNEUMONIA"]', "names 1 class; a classifier needs at least two"),  # a sigmoid unit: every film PNEUMONIA
    ('["a", "a", "b"]', "names 'a' twice"),
    ('["a", null]', "holds null, which is not a class name"),  # served as the label "None"
    ('["a", ""]', 'holds "", which is not a class name'),
])
def test_labels_no_classifier_can_answer_with_are_refused(labels, reason):
    with pytest.raises(ModelCardError, match=f"^m.onnx: medclf.labels {reason}$"):
        ModelCard.from_metadata(CARD.to_metadata() | {"medclf.labels": labels}, "m.onnx")
