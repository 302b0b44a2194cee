"""INT8 files pool the familiarity levels from the int8 convolutions' own uint8 outputs, summed in integers.

The ``unfamiliarity`` output (:mod:`.familiarity`) reads each level as the mean of a feature map. In a QDQ file
that map is a uint8 tensor behind a ``DequantizeLinear``, and onnxruntime runs the int8 convolutions channels
last: to pool it as the file says, the CPU transposed every level's map back to channels first, dequantized all
of it to float32 and averaged — on the packaged blood-cell model at batch 32, three Transposes, three
DequantizeLinear and three GlobalAveragePools over 233 thousand values an image, the most of INT8's cost for
the output (its throughput fell from 1.5-2.7x FP32's to 1.4-1.6x when the output was added).

The mean of a dequantized map is ``scale * (sum(x - zero_point) / pixels)``: the sum can be taken on the uint8
tensor itself, exactly, in int32. Here it is ``ones @ x`` (``MatMulInteger``, the zero point its own input)
over the map made channels last explicitly — the very transpose onnxruntime inserts back, so the two cancel and
the sum reads the convolution's output where it lies. Only the levels' pooling changes: the distances after it
stay float32, and the result equals the float pooling's to float32 rounding (1e-5 relative, measured).

Only the onnxruntime flavour gets this (``MatMulInteger`` is a standard ONNX operator, but TensorRT's parser
does not take it, and its engines pool on the GPU anyway); a level whose map has no static size or no
per-tensor quantization keeps its float pooling.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .output_nodes import familiarity_nodes

INTEGER_TYPES = (TensorProto.UINT8, TensorProto.INT8)


def pool_levels_in_integers(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each familiarity ``DequantizeLinear → GlobalAveragePool`` replaced by an integer sum of the
    quantized map (see the module docstring); a dequantization left with no reader is dropped."""
    shapes = _static_shapes(model)
    producers = {name: node for node in model.graph.node for name in node.output}
    readers = Counter(name for node in model.graph.node for name in node.input)
    constants = {init.name: init for init in model.graph.initializer}
    familiar = set(familiarity_nodes(model))
    nodes, constants_added, bypassed = [], [], set()
    for node in model.graph.node:
        source = producers.get(node.input[0]) if node.op_type == "GlobalAveragePool" and node.name in familiar \
            else None
        if not _summable(source, shapes, constants):
            nodes.append(node)
            continue
        summed, added = _integer_mean(node, source, shapes[source.input[0]], constants)
        nodes += summed
        constants_added += added
        if readers[source.output[0]] == 1:
            bypassed.add(source.name)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.node[:]
    result.graph.node.extend(node for node in nodes if node.name not in bypassed)
    result.graph.initializer.extend(constants_added)
    return result


def _integer_mean(pool: onnx.NodeProto, dequantize: onnx.NodeProto, shape: tuple[int, int, int],
                  constants: dict[str, onnx.TensorProto]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes giving ``pool``'s output, ``[N, C, 1, 1]`` float32, from ``dequantize``'s quantized input."""
    channels, height, width = shape
    quantized, scale, zero_point = dequantize.input[:3]
    pixels = height * width
    name = f"{pool.name}/integer"
    added = [numpy_helper.from_array(np.array([-1, pixels, channels], np.int64), f"{name}/pixels_shape"),
             numpy_helper.from_array(np.ones((1, pixels), np.uint8), f"{name}/ones"),
             numpy_helper.from_array(np.array(0, np.uint8), f"{name}/ones_zero_point"),
             numpy_helper.from_array(np.float32(numpy_helper.to_array(constants[scale]) / pixels), f"{name}/scale"),
             numpy_helper.from_array(np.array([-1, channels, 1, 1], np.int64), f"{name}/pooled_shape")]
    nodes = [helper.make_node("Transpose", [quantized], [f"{name}/channels_last"], f"{name}/channels_last",
                              perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", [f"{name}/channels_last", f"{name}/pixels_shape"], [f"{name}/pixels"],
                              f"{name}/pixels"),
             helper.make_node("MatMulInteger", [f"{name}/ones", f"{name}/pixels", f"{name}/ones_zero_point",
                                                zero_point], [f"{name}/sums"], f"{name}/sums"),  # [N, 1, C] int32
             helper.make_node("Cast", [f"{name}/sums"], [f"{name}/float_sums"], f"{name}/float_sums",
                              to=TensorProto.FLOAT),
             helper.make_node("Mul", [f"{name}/float_sums", f"{name}/scale"], [f"{name}/means"], f"{name}/means"),
             helper.make_node("Reshape", [f"{name}/means", f"{name}/pooled_shape"], [pool.output[0]], pool.name)]
    return nodes, added


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, int, int]]:
    """``(channels, height, width)`` of every 4-D integer tensor whose three are known."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {}
    for value in [*inferred.input, *inferred.value_info, *inferred.output]:
        tensor = value.type.tensor_type
        dims = [dim.dim_value for dim in tensor.shape.dim]
        if tensor.elem_type in INTEGER_TYPES and len(dims) == 4 and all(dims[1:]):
            shapes[value.name] = (dims[1], dims[2], dims[3])
    return shapes


def _summable(dequantize: onnx.NodeProto | None, shapes: dict[str, tuple[int, int, int]],
              constants: dict[str, onnx.TensorProto]) -> bool:
    """Whether ``dequantize`` is a per-tensor dequantization (scale and zero point constant scalars) of a map
    whose size is known."""
    if dequantize is None or dequantize.op_type != "DequantizeLinear" or len(dequantize.input) != 3:
        return False
    parameters = [constants.get(name) for name in dequantize.input[1:]]
    return dequantize.input[0] in shapes and all(p is not None and not p.dims for p in parameters)
