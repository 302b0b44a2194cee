"""Small real ONNX graphs with a medclf model card, for tests of what surrounds a model (its threshold, its
card), not of what a network learned; and a calibration reader over arrays in memory."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from medclf.runtime import ModelCard
from medclf.runtime.modelcard import INPUT_NAME, OUTPUT_NAME


def brightness_model(path, card: ModelCard, nan_when_black: bool = False, even_batches_only: bool = False) -> str:
    """A real ONNX graph: p(bright) = mean pixel / 255, p(dark) = 1 - that; with ``nan_when_black``, both NaN
    for an all-black image (0 / 0, as an overflow inside a float16 network leaves them); with
    ``even_batches_only``, onnxruntime fails on a batch of an odd number of images (its probabilities reshaped
    to rows of 4 and back), as a model fails on a batch too large for the memory left."""
    scale = "mean1" if nan_when_black else "scale"  # mean / mean: 1, or NaN where the mean is 0
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1, 2, 3], keepdims=0),  # [N]
        helper.make_node("Unsqueeze", ["mean", "axis1"], ["mean1"]),  # [N, 1]
        helper.make_node("Div", ["mean1", scale], ["bright"]),
        helper.make_node("Sub", ["one", "bright"], ["dark"]),
        helper.make_node("Concat", ["dark", "bright"], ["both" if even_batches_only else OUTPUT_NAME], axis=1),
    ]
    initializers = [helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
                    helper.make_tensor("scale", TensorProto.FLOAT, [1, 1], [255.0]),
                    helper.make_tensor("one", TensorProto.FLOAT, [1, 1], [1.0])]
    if even_batches_only:
        nodes += [helper.make_node("Reshape", ["both", "fours"], ["pairs"]),
                  helper.make_node("Reshape", ["pairs", "twos"], [OUTPUT_NAME])]
        initializers += [helper.make_tensor("fours", TensorProto.INT64, [2], [-1, 4]),
                         helper.make_tensor("twos", TensorProto.INT64, [2], [-1, 2])]
    graph = helper.make_graph(
        nodes, "brightness",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", 8, 8, 1])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 2])], initializers)
    return _saved(graph, card, path)


def foreign_graph(path, card: ModelCard, input_name: str, input_type: int, input_shape: list, output: str) -> str:
    """A real ONNX graph another tool might write — ``input_name`` in, ``output`` [N, 2] out — carrying a medclf
    model card (copied from another model, or written by hand)."""
    nodes = [helper.make_node("Cast", [input_name], ["x"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["x"], ["mean"], axes=[2, 3], keepdims=0),
             helper.make_node("Slice", ["mean", "start", "end", "axis"], [output])]
    initializers = [helper.make_tensor(name, TensorProto.INT64, [1], [value])
                    for name, value in (("start", 0), ("end", 2), ("axis", 1))]
    graph = helper.make_graph(nodes, "foreign", [helper.make_tensor_value_info(input_name, input_type, input_shape)],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", 2])], initializers)
    return _saved(graph, card, path)


def _saved(graph: onnx.GraphProto, card: ModelCard, path) -> str:
    """``graph`` as a checked ONNX file at ``path`` carrying ``card``."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, card.to_metadata())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


class ArrayReader:
    """Calibration batches from arrays already in memory."""

    def __init__(self, batches: list[np.ndarray], name: str = "x"):
        self.batches, self.name, self.position = batches, name, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        self.position += 1
        return {self.name: self.batches[self.position - 1]} if self.position <= len(self.batches) else None

    def rewind(self) -> None:
        self.position = 0
