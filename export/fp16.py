"""FP32 ONNX → FP16 ONNX with the same contract: uint8 ``image`` in, float32 ``probabilities`` out.

onnxruntime's own float16 converter does the work: it grew out of onnxconverter-common's, gives the same
probabilities here, and converts MobileNetV2 in 0.1 s where onnxconverter-common took over ten minutes.
``keep_io_types`` leaves the graph's inputs and outputs as they were, and every ``Cast`` stays on the block
list (the first, uint8 → float32, converted, would become a cascade of casts wired to the wrong type). What is
left in float32 is what the converter's default block list keeps, the first ``float_convs`` convolutions of each
backbone and the ``unfamiliarity`` output's nodes (:func:`to_fp16`).

Rounding the weights to float16 is nearly all of FP16's error on a CPU: with everything else float32, the
default-trained blood-cell model's convolution weights rounded to float16 moved its probabilities as much as the
whole FP16 file did. Each weight rounded to its nearest float16 is not the best choice: the errors add up in
every output, with a mean that later layers inherit (as with INT8) and a spread that depends on the image. So
the weights are rounded as GPTQ rounds to integers (:func:`compensated_rounding`): a convolution's bias and
weights one after another, each one's rounding error taken up by those not yet rounded, in the way that least
changes the convolution's outputs on calibration images (:mod:`.input_moments`). Measured on the blood-cell
model, 1,024 held-out images, no convolution kept float32 (median / max |Δp| against FP32): nearest rounding
2.3e-3 / 3.6e-2 (3 changed calls), balanced rounding of each channel's mean error 5.0e-4 / 1.6e-2 (0 changed),
compensated 2.6e-4 / 6.4e-3 (0 changed). In the weights' own order: GPTQ's "act order" (the weights with the
most input power first) got 4.7e-4 / 1.0e-2 there, and the demo's model 4.9e-4 against 4.2e-4.

The input's normalisation is rounded too, and on a soft model it was the largest single source of error:
``x · a + b`` (MobileNetV2's ``x / 127.5 - 1``) rounds values near 1 before the 1 is taken off. So it is
rewritten first (:func:`centred_input`) as ``x + b / a`` — exact in float16 for pixels 0-255 and a shift of
-127.5 — with the scale ``a`` moved into the first convolution's weights. With float16 activations (median /
max |Δp| against Keras, changed calls): the demo's soft model 1.18e-3 / 1.9e-2, 5 → 7.4e-4 / 1.3e-2, 2 of
1,376; the default-trained blood-cell model 6.5e-4 / 1.26e-2, 0 → 4.6e-4 / 1.17e-2, 1; the 224-px chest model
1.49e-4 / 1.19e-2 → 1.45e-4 / 9.0e-3, 0 of 782.

Verification runs an FP16 file as a GPU computes it (:func:`with_float16_activations`), not as onnxruntime's
CPU does: the CPU has no float16 kernels for most operators, so it computes the whole float16 part of the graph
in float32 between two casts, and only the weights' rounding shows. GPUs — what FP16 files are for — keep every
activation in float16, with its rounding and its range (past 65,504 a value becomes infinite, then NaN).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

from .bias_correction import _group, rewrite_convs
from .input_moments import POSITIONS_PER_IMAGE, conv_patch_moments
from .int8 import ImageCalibrationReader
from .output_nodes import familiarity_nodes, leading_convs

KEEP_FLOAT32 = [*DEFAULT_OP_BLOCK_LIST, "Cast"]
# How much of its mean diagonal is added to each convolution's patch moments before their inverse is taken. On
# the blood-cell model above (median |Δp|): 0.001 3.3e-4, 0.01 2.9e-4, 0.1 2.6e-4, 0.3 4.0e-4, 1.0 5.0e-4.
DAMPING = 0.1


def to_fp16(model: onnx.ModelProto, float_convs: int = 0,
            moments: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """Weights and activations in float16 between the uint8 input and the float32 probabilities, except the
    first ``float_convs`` convolutions of each backbone and the ``unfamiliarity`` output's nodes, kept float32.
    ``moments`` (:func:`~.input_moments.conv_patch_moments` of ``model``): the float16 convolutions' weights
    rounded to keep their outputs close (:func:`compensated_rounding`); without, each to its nearest."""
    convs = leading_convs(model, float_convs)
    if moments is not None:
        model = compensated_rounding(model, moments, set(convs))
    kept = convs + familiarity_nodes(model)
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=KEEP_FLOAT32,
                                         node_block_list=kept)
    converted = _without_round_trips(converted, set(kept))
    OnnxModel(converted).topological_sort()  # the converter appends its casts at the end; TensorRT wants order
    onnx.checker.check_model(converted)
    return converted


def _without_round_trips(model: onnx.ModelProto, kept: set[str]) -> onnx.ModelProto:
    """The converter casts a ``kept`` (float32) node's output to float16 for whatever reads it, and back to
    float32 for a kept reader: between two kept nodes, a round trip through float16 after every one. In the
    unfamiliarity's nodes that rounded each step and made the squared distances of an image far from the training
    ones infinite (65,504 is float16's largest; FP32 said 905 for a noise image, this 'inf' — and inf - inf is
    NaN, which no threshold flags). Each such pair goes: its readers read the float32 value (a graph output
    becomes an ``Identity`` of it, to keep its name); a cast to float16 that nothing else reads goes too."""
    producers = {name: node for node in model.graph.node for name in node.output}

    def cast_to(node: onnx.NodeProto | None) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node and node.op_type == "Cast" else None

    def round_trip(node: onnx.NodeProto) -> onnx.NodeProto | None:
        """The cast to float16 that ``node``, a cast back to float32, undoes, where its input was float32."""
        first = producers.get(node.input[0]) if cast_to(node) == TensorProto.FLOAT else None
        source = producers.get(first.input[0]) if cast_to(first) == TensorProto.FLOAT16 else None
        return first if source is not None and source.name in kept else None

    outputs = {value.name for value in model.graph.output}
    trips = {node.name: first for node in model.graph.node if (first := round_trip(node)) is not None}
    undone = {node.output[0]: trips[node.name].input[0] for node in model.graph.node
              if node.name in trips and node.output[0] not in outputs}
    nodes = []
    for node in model.graph.node:
        if node.output[0] in undone:
            continue  # its readers read the float32 value itself
        if node.name in trips:  # a graph output keeps its name
            node = helper.make_node("Identity", [trips[node.name].input[0]], list(node.output), node.name)
        node.input[:] = [undone.get(name, name) for name in node.input]
        nodes.append(node)
    read = {name for node in nodes for name in node.input} | outputs
    del model.graph.node[:]
    model.graph.node.extend(node for node in nodes
                            if not (cast_to(node) == TensorProto.FLOAT16 and node.output[0] not in read))
    return model


class Fp16Converter:
    """Converts FP32 files to FP16 as many ways as an export's search tries, with the weights' rounding
    compensated on one calibration reader's images; the moments each file's tries share are measured once."""

    def __init__(self, reader: ImageCalibrationReader) -> None:
        self.reader = reader
        self._moments: tuple[tuple[str, int], dict[str, np.ndarray]] | None = None

    def convert(self, fp32_path: str | os.PathLike[str], float_convs: int = 0) -> onnx.ModelProto:
        model = onnx.load(str(fp32_path))
        key = (str(Path(fp32_path).resolve()), Path(fp32_path).stat().st_mtime_ns)
        model = centred_input(model)
        if self._moments is None or self._moments[0] != key:
            self._moments = key, conv_patch_moments(model, self.reader)
        return to_fp16(model, float_convs, self._moments[1])

    def method(self) -> dict:
        """How the files are made, for whoever audits an export report."""
        return {"converter": "onnxruntime float16 (keep_io_types)",
                "weights": "float16, each convolution's bias then weights rounded in turn, every rounding error "
                           "compensated by the weights left (GPTQ) to keep its outputs on the calibration images",
                "damping": DAMPING, "patch_positions_per_image": POSITIONS_PER_IMAGE,
                "calibration_images": len(self.reader.paths)}


def centred_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its input normalisation ``Cast → Mul(a) → Add(b)`` (scalars), which feeds the first
    convolution (through Transposes alone), computed as ``Cast → Add(b / a)`` and that convolution's weights
    multiplied by ``a``: the same function, with padding too (zeros there are the normalised 0), but nothing to
    round in float16 before the convolution. Any other graph is returned as it is."""
    found = _normalisation(model)
    if found is None:
        return model
    mul, add, conv, scale, shift = found  # positions in the graph's node list
    others = {node.name for node in model.graph.node if node.op_type == "Conv"} - {model.graph.node[conv].name}
    rewritten = rewrite_convs(model, others, lambda node, weight, bias: (weight * np.float32(scale), bias))
    graph = rewritten.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    centring, removed = graph.node[mul], graph.node[add]
    image = next(name for name in centring.input if name not in constants)
    replaced = [constants[name] for name in [*centring.input, *removed.input] if name in constants]
    centring.op_type, centring.input[:] = "Add", [image, "medclf_input_centre"]
    graph.initializer.append(numpy_helper.from_array(np.array(shift / scale, np.float32), "medclf_input_centre"))
    for node in graph.node:  # the Add's readers read the centring instead
        node.input[:] = [centring.output[0] if name == removed.output[0] else name for name in node.input]
    graph.node.remove(removed)
    read = {name for node in graph.node for name in node.input}
    for tensor in replaced:  # a and b, unless something else reads them: onnxruntime warns of unused ones
        if tensor.name not in read:
            graph.initializer.remove(tensor)
    return rewritten


def _normalisation(model: onnx.ModelProto) -> tuple[int, int, int, float, float] | None:
    """``(mul, add, conv, a, b)``, the first three positions in the node list, where the graph opens with the
    normalisation :func:`centred_input` rewrites."""
    nodes = list(model.graph.node)
    weights = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    readers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            readers.setdefault(name, []).append(index)

    def only_reader(index: int, op_types: tuple[str, ...]) -> int | None:
        found = readers.get(nodes[index].output[0], [])
        return found[0] if len(found) == 1 and nodes[found[0]].op_type in op_types else None

    def scalar(index: int) -> float | None:
        constants = [weights[name] for name in nodes[index].input if name in weights]
        return float(constants[0].item()) if len(constants) == 1 and constants[0].size == 1 else None

    inputs = {value.name for value in model.graph.input}
    cast = next((i for i, node in enumerate(nodes) if node.op_type == "Cast" and node.input[0] in inputs), None)
    muls = [i for i in readers.get(nodes[cast].output[0], []) if nodes[i].op_type == "Mul"] if cast is not None \
        else []  # one Mul among the cast's readers: the unfamiliarity output reads the raw pixels beside it
    mul = muls[0] if len(muls) == 1 else None
    add = only_reader(mul, ("Add",)) if mul is not None else None
    if add is None or scalar(mul) in (None, 0.0) or scalar(add) is None:
        return None
    conv = add
    while conv is not None and nodes[conv].op_type != "Conv":
        conv = only_reader(conv, ("Transpose", "Conv"))
    if conv is None or nodes[conv].input[1] not in weights:
        return None
    return mul, add, conv, scalar(mul), scalar(add)


def compensated_rounding(model: onnx.ModelProto, moments: dict[str, np.ndarray], skip: set[str],
                         damping: float = DAMPING) -> onnx.ModelProto:
    """A copy of the float32 ``model`` whose convolutions (but those named in ``skip``) hold float16-exact
    weights and biases chosen to keep their outputs on the calibration images close to float32's, given their
    input patches' ``moments`` (:func:`~.input_moments.conv_patch_moments`): the bias is rounded first, then each
    weight in turn, every rounding error taken up by the weights not yet rounded (:func:`_round_compensating`)."""
    def rounded(node: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if node.output[0] not in moments:  # not a 2-D convolution: each to its nearest, as the converter would
            return weight, bias
        group, out = _group(node), len(weight)
        columns = np.concatenate([bias.reshape(group, out // group, 1), weight.reshape(group, out // group, -1)],
                                 axis=2).astype(np.float64)
        exact = _round_compensating(columns, moments[node.output[0]], damping)
        return exact[:, :, 1:].reshape(weight.shape).astype(np.float32), exact[:, :, 0].reshape(out).astype(np.float32)
    return rewrite_convs(model, skip, rounded)


def _round_compensating(columns: np.ndarray, moments: np.ndarray, damping: float) -> np.ndarray:
    """GPTQ's algorithm (Frantar et al., ICLR 2023) on float16's grid: ``columns`` ``(group, out, 1 + d)``, the
    bias then the weights each output channel of a group multiplies by its ``(1, patch)``, rounded one column at
    a time, each rounding error spread over the columns left so as to least change ``columns · (1, p)`` for
    patches of second ``moments`` ``(group, 1 + d, 1 + d)``. ``damping`` (a fraction of the mean diagonal) keeps
    the inverse stable and the spreading from fitting the calibration images alone."""
    columns = columns.copy()
    diagonal = np.einsum("gii->gi", moments)
    damped, every = moments.copy(), np.arange(moments.shape[1])
    damped[:, every, every] += damping * diagonal.mean(axis=1, keepdims=True) + (diagonal <= 0)  # <= 0: never read
    upper = np.linalg.cholesky(np.linalg.inv(damped)).transpose(0, 2, 1)  # inverse = upperᵀ · upper
    exact = np.empty_like(columns)
    for i in range(columns.shape[2]):
        exact[:, :, i] = columns[:, :, i].astype(np.float16)
        error = (columns[:, :, i] - exact[:, :, i]) / upper[:, i, i, None]
        columns[:, :, i + 1:] -= error[:, :, None] * upper[:, None, i, i + 1:]
    return exact


def with_float16_activations(fp16: onnx.ModelProto) -> onnx.ModelProto:
    """The FP16 model as a GPU computes it, in a form onnxruntime's CPU computes faithfully: every tensor the
    model holds in float16 is rounded to float16 where it is made (a float32 → float16 → float32 pair of casts
    after its node), the arithmetic in between done in float32, as GPU kernels accumulate. Float16 weights and
    constants become the float32 numbers they stand for (exactly).

    Measured on the default-trained blood-cell model's FP16 (compensated, no float32 convolution; 1,376
    held-out images, median / max |Δp| against FP32): as the CPU runs the file 2.6e-4 / 6.2e-3, with float16
    activations 6.5e-4 / 1.3e-2 (nearest rounding: 2.3e-3 / 3.6e-2 either way)."""
    typed = shape_inference.infer_shapes(fp16)
    types = {value.name: value.type.tensor_type.elem_type
             for value in [*typed.graph.value_info, *typed.graph.input, *typed.graph.output]}
    untyped = [name for node in fp16.graph.node for name in node.output if name and name not in types]
    if untyped:
        raise ValueError(f"shape inference gives no type for {', '.join(untyped[:3])}: cannot tell which tensors "
                         "a GPU would hold in float16")
    model = onnx.ModelProto()
    model.CopyFrom(fp16)
    for tensor in model.graph.initializer:
        _as_float32(tensor)
    nodes = []
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT16:
                attribute.i = TensorProto.FLOAT  # the output is rounded below, like every float16 one
            elif attribute.type == onnx.AttributeProto.TENSOR:  # Constant, ConstantOfShape
                _as_float32(attribute.t)
        nodes.append(node)
        for index, name in enumerate(node.output):
            if types.get(name) == TensorProto.FLOAT16:
                node.output[index] = f"{name}/float32"
                nodes += [helper.make_node("Cast", [f"{name}/float32"], [f"{name}/float16"], f"{name}/to_float16",
                                           to=TensorProto.FLOAT16),
                          helper.make_node("Cast", [f"{name}/float16"], [name], f"{name}/rounded",
                                           to=TensorProto.FLOAT)]
    del model.graph.node[:], model.graph.value_info[:]
    model.graph.node.extend(nodes)
    return model


def _as_float32(tensor: onnx.TensorProto) -> None:
    if tensor.data_type == TensorProto.FLOAT16:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name))
