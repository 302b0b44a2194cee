"""What each convolution reads on calibration images, as second moments of its input patches.

A convolution's output at one position is ``w · p + b``, ``p`` the patch of its input that the kernel covers.
Change the weights by ``Δw`` and the bias by ``Δb``, and that output moves by ``Δw · p + Δb``, whose mean
square over the images is ``[Δb, Δw] M [Δb, Δw]ᵀ`` with ``M = E[(1, p)(1, p)ᵀ]``. So ``M`` is all that rounding
needs to know to keep the outputs, not the weights, close (:func:`medclf.export.fp16.compensated_rounding`);
its first row holds the input means that bias correction uses.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from .bias_correction import _group, attribute, probe_session

# Patches sampled per image and convolution: a 224-px MobileNetV2's first layers have 12,544 positions an image,
# neighbours nearly alike; a sample keeps the export's time and memory flat in the image size.
POSITIONS_PER_IMAGE = 2048


def conv_patch_moments(model: onnx.ModelProto, reader: CalibrationDataReader,
                       positions_per_image: int = POSITIONS_PER_IMAGE) -> dict[str, np.ndarray]:
    """Per 2-D convolution whose weights are initializers (keyed by its output's name), ``M = E[(1, p)(1, p)ᵀ]``
    over the patches ``p`` it reads from ``reader``'s images (from its first batch), one matrix per group:
    shape ``(group, 1 + d, 1 + d)``, ``d`` the group's weights per output channel, in the weights' order."""
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    convs = [node for node in model.graph.node  # 2-D convolutions, the only kind medclf's networks have
             if node.op_type == "Conv" and len(weights.get(node.input[1], ())) == 4]
    names = list(dict.fromkeys(node.input[0] for node in convs))
    session = probe_session(model, names)
    rng = np.random.default_rng(0)
    sums: dict[str, list] = {}
    reader.rewind()
    while (batch := reader.get_next()) is not None:
        inputs = dict(zip(names, session.run(names, batch)))
        for node in convs:
            patches = _patches(inputs[node.input[0]], node, weights[node.input[1]][2:], positions_per_image, rng)
            moments = [patches.shape[2], patches.sum(axis=2).astype(np.float64),
                       np.matmul(patches, patches.transpose(0, 2, 1)).astype(np.float64)]
            sums[node.output[0]] = [a + b for a, b in zip(sums.get(node.output[0], [0, 0, 0]), moments)]
    reader.rewind()
    return {key: _bordered(*total) for key, total in sums.items()}


def _bordered(count: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``E[(1, p)(1, p)ᵀ]`` per group from the count, ``Σ p`` and ``Σ p pᵀ``."""
    groups, size = first.shape
    moments = np.empty((groups, size + 1, size + 1))
    moments[:, 0, 0] = count
    moments[:, 0, 1:] = moments[:, 1:, 0] = first
    moments[:, 1:, 1:] = second
    return moments / count


def _patches(x: np.ndarray, node: onnx.NodeProto, kernel: tuple[int, ...], per_image: int,
             rng: np.random.Generator) -> np.ndarray:
    """The patches ``node`` reads from its input ``x`` (NCHW) at about ``per_image`` positions an image or
    fewer (every few output rows and columns, from a random first one), as ``(group, d, positions)``: copied
    one kernel offset at a time, a strided slice of the whole input each."""
    strides, dilations = attribute(node, "strides", [1, 1]), attribute(node, "dilations", [1, 1])
    pads = _pads(node, x.shape[2:], kernel, strides, dilations)
    if any(pads):
        x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    outputs = [(size - dilation * (k - 1) - 1) // stride + 1
               for size, k, stride, dilation in zip(x.shape[2:], kernel, strides, dilations)]
    step = max(1, math.ceil(math.sqrt(math.prod(outputs) / per_image)))
    first = rng.integers(step, size=2)
    kept = [len(range(start, size, step)) for start, size in zip(first, outputs)]
    patches = np.empty((x.shape[1], math.prod(kernel), len(x), *kept), np.float32)
    for offset, (row, column) in enumerate(np.ndindex(*kernel)):
        top, left = row * dilations[0] + first[0] * strides[0], column * dilations[1] + first[1] * strides[1]
        rows, columns = strides[0] * step, strides[1] * step
        window = x[:, :, top:top + (kept[0] - 1) * rows + 1:rows, left:left + (kept[1] - 1) * columns + 1:columns]
        patches[:, offset] = window.transpose(1, 0, 2, 3)
    return patches.reshape(_group(node), -1, math.prod(patches.shape[2:]))


def _pads(node: onnx.NodeProto, size: tuple[int, ...], kernel: tuple[int, ...], strides: list[int],
          dilations: list[int]) -> list[int]:
    """``[top, left, bottom, right]``, from ``pads`` or what ``auto_pad`` means for this input size."""
    auto = attribute(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        return list(attribute(node, "pads", [0, 0, 0, 0]))
    if auto == "VALID":
        return [0, 0, 0, 0]
    total = [max((math.ceil(n / s) - 1) * s + d * (k - 1) + 1 - n, 0)
             for n, k, s, d in zip(size, kernel, strides, dilations)]
    small = [t // 2 for t in total]
    large = [t - s for t, s in zip(total, small)]
    return small + large if auto == "SAME_UPPER" else large + small

