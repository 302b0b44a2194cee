"""A binary model's operating threshold travels in the ONNX file and the runtime calls by it."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from medclf.runtime import Classifier, ModelCard, ModelCardError, Preprocess
from medclf.runtime.decision import Decision, decide
from medclf.runtime.modelcard import INPUT_NAME, OUTPUT_NAME


def brightness_model(path, card: ModelCard) -> str:
    """A real ONNX graph: p(bright) = mean pixel / 255, p(dark) = 1 - that."""
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1, 2, 3], keepdims=0),  # [N]
        helper.make_node("Unsqueeze", ["mean", "axis1"], ["mean1"]),  # [N, 1]
        helper.make_node("Div", ["mean1", "scale"], ["bright"]),
        helper.make_node("Sub", ["one", "bright"], ["dark"]),
        helper.make_node("Concat", ["dark", "bright"], [OUTPUT_NAME], axis=1),
    ]
    initializers = [helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
                    helper.make_tensor("scale", TensorProto.FLOAT, [1, 1], [255.0]),
                    helper.make_tensor("one", TensorProto.FLOAT, [1, 1], [1.0])]
    graph = helper.make_graph(
        nodes, "brightness",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", 8, 8, 1])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 2])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, card.to_metadata())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


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
