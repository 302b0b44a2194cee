"""FP32 ONNX → FP16 ONNX with the same contract: uint8 ``image`` in, float32 ``probabilities`` out.

onnxruntime's own float16 converter does the work: it grew out of onnxconverter-common's, gives the same
probabilities here, and converts MobileNetV2 in 0.1 s where onnxconverter-common took over ten minutes.
``keep_io_types`` leaves the graph's inputs and outputs as they were, and the graph's first ``Cast``
(uint8 → float32) stays on the block list: converted, it would become a cascade of casts wired to the wrong
type. What is left in float32 is what the converter's default block list keeps.

Rounding the weights to float16 is most of FP16's error on a CPU, and, as with INT8, its mean is a shift per output
channel that every later layer inherits: with all else float32, the default-trained blood-cell model's convolution
weights rounded to float16 moved its probabilities by a median 1.9e-3, the whole FP16 file 2.3e-3. So, given its
convolutions' input means on calibration images, :func:`balanced_rounding` first takes that mean out of each bias
(:mod:`.bias_correction`) — and since the bias is then rounded to float16 too (by up to 0.012 where BatchNorm
folded a large one in), rounds weights the other way (11% of them) until the bias's own rounding error is cancelled
as well. The same model: median |Δp| 2.3e-3 → 5.1e-4, 3 → 0 changed calls of 1,024 held-out images, with no
convolution kept float32; the bias correction alone got 9.6e-4 (its float16 bias undid half of it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

from .bias_correction import _group, conv_input_means, mean_error, rewrite_convs
from .int8 import ImageCalibrationReader

KEEP_FLOAT32 = [*DEFAULT_OP_BLOCK_LIST, "Cast"]


def to_fp16(model: onnx.ModelProto, float_convs: int = 0,
            means: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """Weights and activations in float16 between the uint8 input and the float32 probabilities, except the
    first ``float_convs`` convolutions: float16's rounding error grows layer by layer, so what the early layers
    add is carried furthest (MobileNetV2, the demo's blood-cell model, 1,376 held-out images: median |Δp|
    0.0041 all float16; 0.0017, 0.0013, 0.0010 with the first 8, 15, 20 of 52 convolutions float32).
    ``means`` (:func:`~.bias_correction.conv_input_means` of ``model``): the float16 convolutions' weights
    rounded so that their mean error cancels (:func:`balanced_rounding`); without, each to its nearest."""
    convs = [node.name for node in model.graph.node if node.op_type == "Conv"][:float_convs]
    if means is not None:
        model = balanced_rounding(model, means, set(convs))
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=KEEP_FLOAT32,
                                         node_block_list=convs)
    OnnxModel(converted).topological_sort()  # the converter appends its casts at the end; TensorRT wants order
    onnx.checker.check_model(converted)
    return converted


class Fp16Converter:
    """Converts FP32 files to FP16 as many ways as an export's search tries, with the weights' rounding
    balanced on one calibration reader's images; the means each file's tries share are measured once."""

    def __init__(self, reader: ImageCalibrationReader) -> None:
        self.reader = reader
        self._means: tuple[tuple[str, int], dict[str, np.ndarray]] | None = None

    def convert(self, fp32_path: str | os.PathLike[str], float_convs: int = 0) -> onnx.ModelProto:
        model = onnx.load(str(fp32_path))
        key = (str(Path(fp32_path).resolve()), Path(fp32_path).stat().st_mtime_ns)
        if self._means is None or self._means[0] != key:
            self._means = key, conv_input_means(model, self.reader)
        return to_fp16(model, float_convs, self._means[1])

    def method(self) -> dict:
        """How the files are made, for whoever audits an export report."""
        return {"converter": "onnxruntime float16 (keep_io_types)",
                "weights": "float16, rounded so each convolution's mean error, its bias's rounding included, "
                           "cancels on the calibration images",
                "calibration_images": len(self.reader.paths)}


def balanced_rounding(model: onnx.ModelProto, means: dict[str, np.ndarray], skip: set[str]) -> onnx.ModelProto:
    """A copy of the float32 ``model`` whose convolutions (but those in ``skip``) hold float16-exact weights and
    biases chosen so that, at their inputs' channel ``means``, each output channel's mean is what float32 gives:
    the bias corrected for the weights' rounding and rounded itself, then what that rounding adds cancelled by
    rounding weights the other way — those it costs least, a weight at a time while the mean error shrinks."""
    def balanced(node: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = means[node.input[0]]
        nearest, other = _float16_neighbours(weight)
        corrected = bias.astype(np.float64) - mean_error(weight, nearest, mean, _group(node))
        bias16 = corrected.astype(np.float16).astype(np.float32)
        return _cancel(weight, nearest, other, _per_weight(mean, weight.shape, _group(node)),
                       bias16 - corrected), bias16
    return rewrite_convs(model, skip, balanced)


def _float16_neighbours(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each weight's nearest float16 value and the float16 value on its other side (itself where exact)."""
    nearest = weight.astype(np.float16)
    up, down = np.nextafter(nearest, np.float16(np.inf)), np.nextafter(nearest, np.float16(-np.inf))
    other = np.where(nearest < weight, up, np.where(nearest > weight, down, nearest))
    return nearest.astype(np.float32), other.astype(np.float32)


def _per_weight(mean: np.ndarray, shape: tuple[int, ...], group: int) -> np.ndarray:
    """The input channel mean each weight of a ``shape`` convolution of ``group`` groups multiplies."""
    out_channels, per_group = shape[:2]
    per_channel = np.repeat(mean.reshape(group, per_group), out_channels // group, axis=0)
    return np.broadcast_to(per_channel.reshape(out_channels, per_group, *[1] * (len(shape) - 2)), shape)


def _cancel(weight: np.ndarray, nearest: np.ndarray, other: np.ndarray, mean: np.ndarray,
            residual: np.ndarray) -> np.ndarray:
    """``nearest`` with, per output channel, weights moved to ``other`` until the channel's mean error
    (``residual`` to start with) is as small as those moves make it, cheapest moves first."""
    rows, others = nearest.reshape(len(weight), -1).copy(), other.reshape(len(weight), -1)
    moves = ((other - nearest) * mean).reshape(len(weight), -1).astype(np.float64)
    costs = (np.abs(other - weight) - np.abs(nearest - weight)).reshape(len(weight), -1)
    for channel, error in enumerate(residual.astype(np.float64)):
        candidates = np.flatnonzero(np.sign(moves[channel]) == -np.sign(error))
        for i in candidates[np.argsort(costs[channel, candidates], kind="stable")]:
            if abs(error + moves[channel, i]) < abs(error):
                rows[channel, i] = others[channel, i]
                error += moves[channel, i]
    return rows.reshape(weight.shape)
