"""An exported file's unfamiliarity, set again depth by depth on images as that file computes them.

The ``unfamiliarity`` output (:mod:`.familiarity`) is the largest of per-depth ratios — each depth's distance
from the training images over its 99.5th percentile on held-out images, fitted on the Keras model's features.
Two things move those ratios after the fit, and both are met the same way: a ``Mul`` by one weight per depth on
the ratios, before the ``ReduceMax`` that gives the output, the weights putting each depth, then the largest, at
its 99.5th percentile over the images at hand.

* Another precision (export): FP16 and INT8 compute the features the distances are measured on, and a quantized
  feature map can sit far from the float one in directions the training images hardly vary in. A SqueezeNet-style
  model's INT8 file flagged every one of its 256 verification images (its FP32 file 0.8%): at the classifier
  input's depth its distances ran 6.5x FP32's. Set again on those images as the INT8 file computes them: 0.8% of
  them flagged, blood TEST 1.6%, chest films and eye photos still 100%.
* Another site (``medclf calibrate --familiarity-from-site``): another scanner, stain or exposure moves the
  shallow depths (see :mod:`medclf.train.site_familiarity`).

All of it works on the ONNX file alone, in any precision, and on a file set again before (the names are new
each time).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime

from medclf.runtime.modelcard import FAMILIARITY_NAME, INPUT_NAME, OUTPUT_NAME


class NotLevelled(ValueError):
    """The file's unfamiliarity is not the largest of per-depth ratios (not exported by medclf)."""


def levels_tensor(model: onnx.ModelProto) -> str:
    """The name of the ``[batch, depths]`` tensor whose largest entry is the model's unfamiliarity."""
    return _largest(model).input[0]


def _largest(model: onnx.ModelProto) -> onnx.NodeProto:
    """The ``ReduceMax`` that gives the unfamiliarity, through what a float16 conversion puts after it (casts, or
    the identity :mod:`.fp16` leaves of a round trip through float16)."""
    producers = {name: node for node in model.graph.node for name in node.output}
    producer = producers.get(FAMILIARITY_NAME)
    while producer is not None and producer.op_type in ("Cast", "Identity"):
        producer = producers.get(producer.input[0])
    if producer is None or producer.op_type != "ReduceMax":
        raise NotLevelled(f"{FAMILIARITY_NAME} is not the largest of per-depth ratios in this file: export it again "
                          "with medclf")
    return producer


def outputs_with_ratios(model: str | os.PathLike[str] | onnx.ModelProto) -> Callable[[np.ndarray], np.ndarray]:
    """``images → [probabilities | per-depth ratios]``: the file (or a loaded model, left as it is) with its ratios
    as an output too, on the CPU."""
    if isinstance(model, onnx.ModelProto):
        given, model = model, onnx.ModelProto()
        model.CopyFrom(given)  # the caller's model keeps its outputs
    else:
        model = onnx.load(str(model))
    levels = levels_tensor(model)
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(levels))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def run(images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        return np.concatenate([np.hstack(session.run([OUTPUT_NAME, levels], {INPUT_NAME: images[i:i + batch_size]}))
                               for i in range(0, len(images), batch_size)])
    return run


def depth_weights(ratios: np.ndarray, quantile: float) -> tuple[float, ...]:
    """The weights that put each depth's ratios ``[N, depths]``, then their largest, at ``quantile`` over these
    images; a depth that never moves here keeps its scale."""
    depth = np.quantile(ratios, quantile, axis=0)
    depth = np.where(depth > 0, depth, 1.0)
    largest = float(np.quantile((ratios / depth).max(axis=1), quantile))
    return tuple(float(w) for w in 1 / (depth * largest))


def with_depth_weights(model: onnx.ModelProto, weights: tuple[float, ...], prefix: str) -> onnx.ModelProto:
    """A copy of ``model`` whose per-depth ratios are multiplied by ``weights`` before their largest is taken
    (new nodes named from ``prefix``)."""
    prefix = f"{prefix}{len(model.graph.node)}_"
    weighted = onnx.ModelProto()
    weighted.CopyFrom(model)
    nodes = weighted.graph.node
    largest = _largest(weighted)
    levels, at = largest.input[0], list(nodes).index(largest)
    largest.input[0] = prefix + "weighted_levels"
    nodes.insert(at, onnx.helper.make_node("Mul", [levels, prefix + "weights"], [prefix + "weighted_levels"]))
    weighted.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray([weights], np.float32),
                                                                   prefix + "weights"))
    onnx.checker.check_model(weighted)
    return weighted


def set_again_on(model_path: str | os.PathLike[str], images: np.ndarray, classes: int, quantile: float,
                 prefix: str) -> tuple[float, ...]:
    """Rewrite the file at ``model_path`` with its unfamiliarity set again on ``images`` as it computes them
    (``classes``: how many probabilities come before the ratios); returns the depths' weights."""
    model = onnx.load(str(model_path))
    weights = depth_weights(outputs_with_ratios(model)(images)[:, classes:], quantile)
    onnx.save(with_depth_weights(model, weights, prefix), str(model_path))
    return weights
