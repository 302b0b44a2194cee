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
