"""A binary model's operating threshold travels in the ONNX file and the runtime calls by it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from medclf.runtime import Classifier, ModelCard, ModelCardError, Preprocess
from medclf.runtime.decision import Decision, decide
from tests.onnx_graphs import brightness_model


def grey_png(tmp_path, name: str, value: int) -> str:
    import cv2

    path = tmp_path / name
    cv2.imwrite(str(path), np.full((8, 8), value, np.uint8))
    return str(path)


CARD = ModelCard(labels=("dark", "bright"), preprocess=Preprocess(8, 8, color="grey"))


def test_decide_is_argmax_without_a_decision_and_the_threshold_with_one():
    probabilities = np.array([[0.7, 0.3], [0.9, 0.1], [0.2, 0.8]])
    assert decide(probabilities, ("normal", "finding")).tolist() == [0, 0, 1]
    decision = Decision("finding", threshold=0.25)
    assert decide(probabilities, ("normal", "finding"), decision).tolist() == [1, 0, 1]
    assert decide(probabilities[:, ::-1], ("finding", "normal"), decision).tolist() == [0, 1, 0]


def test_the_runtime_calls_the_finding_below_fifty_percent_when_the_threshold_says_so(tmp_path):
    decision = Decision("bright", threshold=0.3, rule="sensitivity>=0.95")
    with_threshold = brightness_model(tmp_path / "t.onnx", dataclasses.replace(CARD, decision=decision))
    without = brightness_model(tmp_path / "a.onnx", CARD)
    image = grey_png(tmp_path, "grey.png", 102)  # p(bright) = 0.4
    called = next(Classifier(with_threshold).classify([image], top_k=2))
    assert (called.label, called.probability) == ("bright", pytest.approx(0.4))
    assert called.top_k[0] == ("dark", pytest.approx(0.6))  # top-k still lists by probability
    assert next(Classifier(without).classify([image])).label == "dark"
    assert Classifier(with_threshold).card.decision.rule == "sensitivity>=0.95"


def test_a_decision_naming_a_class_the_model_lacks_is_refused():
    metadata = CARD.to_metadata() | {"medclf.decision": Decision("cataract", 0.5).to_json()}
    with pytest.raises(ModelCardError, match="cataract"):
        ModelCard.from_metadata(metadata, "m.onnx")


def test_medclf_run_says_once_at_what_probability_the_finding_is_called(tmp_path):
    import subprocess
    import sys

    decision = Decision("bright", threshold=0.3, rule="sensitivity>=0.95")
    model = brightness_model(tmp_path / "t.onnx", dataclasses.replace(CARD, decision=decision))
    images = [grey_png(tmp_path, f"{value}.png", value) for value in (102, 204)]
    done = subprocess.run([sys.executable, "-m", "medclf.runtime.cli", "--model", model, *images],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # the more probable class beside a call made under one half (it said "bright 0.400" twice with --top-k 2)
    assert done.stdout.splitlines()[1].split()[1:] == ["bright", "0.400", "dark", "0.600"]
    ranked = subprocess.run([sys.executable, "-m", "medclf.runtime.cli", "--model", model, "--top-k", "2", images[0]],
                            capture_output=True, text=True)
    assert ranked.stdout.splitlines()[1].split()[1:] == ["bright", "0.400", "dark", "0.600"]
    said = [line for line in done.stderr.splitlines() if "is called when" in line]
    assert said == ["bright is called when its probability is at least 0.3 (the model's threshold: sensitivity>=0.95)"]
