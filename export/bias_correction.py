"""Bias correction: move into each convolution's bias the mean error its int8 weights are about to make.

Rounding weights to int8 changes a convolution's output by ``(W_int8 - W) · x``. Its inputs mostly come out of
ReLUs, so they have a mean far from zero, and the error has one too: a systematic shift per output channel
that every later layer inherits (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction", ICCV 2019). Subtracting ``(W_int8 - W) · E[x]`` from the bias removes that mean; ``E[x]`` is
each input channel's mean over the calibration images. Measured on three trained MobileNetV2 models (1,024
held-out images each), INT8's top-1 agreement with FP32: 97.1% → 98.6%, 92.8% → 97.7% and 90.1% → 95.6% with
one float convolution; the blood-cell model with three: 98.3% → 99.4%. With weights alone quantized, the
blood-cell model's 96.8% became 99.3%: the weights' error, not the activations', is what it removes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime import InferenceSession
from onnxruntime.quantization import CalibrationDataReader


def correct_biases(model: onnx.ModelProto, means: dict[str, np.ndarray], skip: set[str]) -> onnx.ModelProto:
    """A copy of the float ``model`` in which every convolution not named in ``skip`` (those staying float)
    has its bias corrected for its weights' int8 rounding, given its input's channel ``means``
    (:func:`conv_input_means`)."""
    def corrected(node: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return weight, bias - mean_error(weight, int8_weights(weight), means[node.input[0]], _group(node))
    return rewrite_convs(model, skip, corrected)


def rewrite_convs(model: onnx.ModelProto, skip: set[str],
                  rewrite: Callable[[onnx.NodeProto, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                  ) -> onnx.ModelProto:
    """A copy of ``model`` in which every convolution not named in ``skip`` has its weights and bias replaced
    by what ``rewrite(node, weight, bias)`` returns (a convolution without a bias is given zeros). Each new
    tensor is an initializer of its own — another node may share the old one, which goes only once nothing
    reads it — named apart from every tensor the model already holds (a model rewritten before, by another
    pass, holds some of these names), and a weight or bias ``rewrite`` returns unchanged (the same array) keeps
    its initializer, or its absence."""
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    tensors = {init.name: init for init in rewritten.graph.initializer}
    convs = [node for node in rewritten.graph.node if node.op_type == "Conv" and node.name not in skip
             and node.input[1] in tensors and (_bias(node) in tensors or not _bias(node))]
    replaced, taken = set(), set(tensors)

    def fresh(name: str) -> str:
        unique, copies = name, 0
        while unique in taken:
            copies += 1
            unique = f"{name}_{copies}"
        taken.add(unique)
        return unique

    for number, node in enumerate(convs):
        weight = numpy_helper.to_array(tensors[node.input[1]])
        old = _bias(node)
        bias = numpy_helper.to_array(tensors[old]) if old else np.zeros(len(weight), np.float32)
        new_weight, new_bias = rewrite(node, weight, bias)
        if new_weight is not weight:
            name = fresh(f"medclf_rewritten_weight_{number}")
            rewritten.graph.initializer.append(numpy_helper.from_array(new_weight.astype(weight.dtype), name))
            replaced.add(node.input[1])
            node.input[1] = name
        if new_bias is bias:
            continue
        name = fresh(f"medclf_corrected_bias_{number}")
        rewritten.graph.initializer.append(numpy_helper.from_array(new_bias.astype(np.float32), name))
        if old:
            node.input[2] = name
            replaced.add(old)
        else:
            del node.input[2:]
            node.input.append(name)
    still_read = {name for node in rewritten.graph.node for name in node.input}
    for name in replaced - still_read:
        rewritten.graph.initializer.remove(tensors[name])
    return rewritten


def conv_input_means(model: onnx.ModelProto, reader: CalibrationDataReader) -> dict[str, np.ndarray]:
    """The channel means of every convolution's input over ``reader``'s images: what :func:`correct_biases`
    needs, whichever convolutions it is then told to skip."""
    return input_means(model, [node.input[0] for node in model.graph.node if node.op_type == "Conv"], reader)


def int8_weights(weight: np.ndarray) -> np.ndarray:
    """The weights as the quantizer will store them, back in float: symmetric int8 per output channel
    (scale = largest |w| / 127, rounded half to even), as onnxruntime's ``quantize_static`` does."""
    rows = weight.reshape(len(weight), -1)
    scale = (np.abs(rows).max(axis=1, keepdims=True).astype(np.float64) * 2 / 254).astype(weight.dtype)  # its maths
    scale[scale == 0] = 1
    return (np.clip(np.round(rows / scale), -127, 127) * scale).reshape(weight.shape).astype(weight.dtype)


def mean_error(weight: np.ndarray, rounded: np.ndarray, input_mean: np.ndarray, group: int = 1) -> np.ndarray:
    """``(rounded - weight) · E[x]`` per output channel of a convolution of ``group`` groups: what the rounded
    weights add to each output on average (borders, where padding feeds zeros, aside)."""
    out_channels, per_group = weight.shape[:2]
    error = (rounded - weight).reshape(out_channels, per_group, -1).sum(axis=2)  # over the kernel's positions
    error = error.reshape(group, out_channels // group, per_group)
    return np.einsum("goi,gi->go", error, input_mean.reshape(group, per_group)).reshape(out_channels)


def input_means(model: onnx.ModelProto, tensors: list[str], reader: CalibrationDataReader) -> dict[str, np.ndarray]:
    """Each of ``tensors``' per-channel mean (axis 1, NCHW) over every image ``reader`` yields (from its first
    batch: it must ``rewind()``, as :class:`~medclf.export.int8.ImageCalibrationReader` does), from one run of
    the float model with those tensors made outputs."""
    names = list(dict.fromkeys(tensors))
    session = probe_session(model, names)
    # float64 sums: in float32 the means depended on the batch size enough to move the chest model's INT8
    # search (one step 100% → 99.6% agreement at 4 images a batch instead of 8)
    sums, count = [0.0] * len(names), 0
    reader.rewind()
    while (batch := reader.get_next()) is not None:
        values = session.run(names, batch)
        sums = [total + value.sum(axis=(0, *range(2, value.ndim)), dtype=np.float64) / np.prod(value.shape[2:])
                for total, value in zip(sums, values)]
        count += len(values[0])
    reader.rewind()
    return {name: (total / count).astype(np.float32) for name, total in zip(names, sums)}


def probe_session(model: onnx.ModelProto, tensors: list[str]) -> InferenceSession:
    """A CPU session of ``model`` that also outputs ``tensors`` (float32 activations inside it)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {output.name for output in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                             for name in tensors if name not in outputs)
    return InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])


def _bias(node: onnx.NodeProto) -> str:
    """The name of a convolution's bias input; "" when it has none."""
    return node.input[2] if len(node.input) > 2 else ""


def _group(node: onnx.NodeProto) -> int:
    return attribute(node, "group", 1)


def attribute(node: onnx.NodeProto, name: str, default):
    """The value of ``node``'s attribute ``name``, or ``default`` when it has none."""
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)
