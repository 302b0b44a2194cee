"""Keras model → ONNX graph that takes uint8 pixels and carries its model card. Conversion only; no checks.

Keras' own ``model.export`` traces the model as called in training, so live augmentation and training-mode
batch norm can end up in the graph; tracing a ``training=False`` wrapper with ``tf2onnx.convert.from_function``
gives exactly the inference graph, with the uint8 → float32 cast as its first node.
"""

from __future__ import annotations

import math
import os
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np
import onnx
import tensorflow as tf
import tf2onnx
from onnx import numpy_helper

import medclf
from medclf.runtime.describe import file_sha256
from medclf.runtime.modelcard import CAM_NAME, FAMILIARITY_NAME, INPUT_NAME, OUTPUT_NAME, ModelCard

from .familiarity import Familiarity, unfamiliarity, with_features

OPSET = 17


CAM_DESCRIPTION = ("class activation maps [batch, h, w, classes]: the last feature map weighted by the classifier's "
                   "weights plus its bias (Zhou et al. 2016); their spatial mean is the logits")


def convert(model: keras.Model, card: ModelCard, opset: int = OPSET, cam: bool = False,
            familiarity: Familiarity | None = None) -> onnx.ModelProto:
    """The inference graph: input ``image`` uint8 NHWC (dynamic batch), output ``probabilities`` float32; with
    ``cam``, an output ``cam`` (see :data:`CAM_DESCRIPTION`) the runtime draws heatmaps from; with
    ``familiarity``, an output ``unfamiliarity`` (see :mod:`.familiarity`). One Keras graph gives them all: the
    backbone runs once."""
    spec = tf.TensorSpec((None, *card.preprocess.shape), tf.uint8, name=INPUT_NAME)
    levels = [level.layer for level in familiarity.levels] if familiarity is not None else []
    graph = with_features(model, levels) if levels else keras.Model(model.input, [model.output])
    if cam:
        features, head = cam_head(model)
        graph = keras.Model(graph.input, [*graph.outputs, features])

    @tf.function(input_signature=[spec])
    def serve(image: tf.Tensor):
        probabilities, *rest = tf.nest.flatten(graph(tf.cast(image, tf.float32), training=False))
        named = [tf.identity(probabilities, name=OUTPUT_NAME)]
        if cam:
            maps = tf.einsum("nhwk,kc->nhwc", rest.pop(), head.kernel) + head.bias
            named.append(tf.identity(maps, name=CAM_NAME))
        if familiarity is not None:
            score = unfamiliarity(rest, familiarity.levels, familiarity.threshold)  # [batch, 1], not [batch]: in
            named.append(tf.identity(score, name=FAMILIARITY_NAME))  # Triton's config, dims [1] without a reshape
        return tuple(named) if len(named) > 1 else named[0]

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=[spec], opset=opset)
    extra = ([CAM_NAME] if cam else []) + ([FAMILIARITY_NAME] if familiarity is not None else [])
    _rename_io(proto, [OUTPUT_NAME, *extra])  # in the order serve returns them
    _exact_resize_scales(proto)
    onnx.helper.set_model_props(proto, card.to_metadata())
    proto.producer_name = "medclf"
    proto.producer_version = medclf.__version__
    onnx.checker.check_model(proto)
    return proto


def provenance(keras_path: str | os.PathLike[str], opset: int = OPSET) -> dict[str, str]:
    """Where an export came from: the Keras file's hash, the tools' versions, the date."""
    return {
        "keras_model": Path(keras_path).name,
        "run_dir": str(Path(keras_path).resolve().parent),  # so medclf evaluate knows what it trained on
        "keras_sha256": file_sha256(keras_path),
        "medclf_version": medclf.__version__,
        "tensorflow_version": tf.__version__,
        "tf2onnx_version": tf2onnx.__version__,
        "opset": str(opset),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def cam_head(model: keras.Model) -> tuple[keras.KerasTensor, keras.layers.Dense]:
    """The last feature map and the softmax head of a model whose head is the exact CAM form: feature map →
    global average pool → (dropout) → dense softmax — found by its structure, whatever its layers are named (a
    tutorial's ``GlobalAveragePooling2D()`` and ``Dense(4, activation="softmax")``)."""
    head = model.layers[-1]
    if model.output_shape[-1] == 2 and any(layer.name == "medclf_two_classes" for layer in model.layers):
        raise ValueError(f"--cam: model {model.name}'s head is one sigmoid unit, whose one map cannot be drawn as "
                         "two classes' heatmaps; export it without --cam (medclf explain draws its Grad-CAM)")
    pool = _producer(model, head.input) if isinstance(head, keras.layers.Dense) and \
        head.activation is keras.activations.softmax else None
    while isinstance(pool, keras.layers.Dropout):
        pool = _producer(model, pool.input)
    if not isinstance(pool, keras.layers.GlobalAveragePooling2D):
        raise ValueError(f"model {model.name} has no feature map → average pool → dense head; a CAM output "
                         "needs one (two_backbones pools two maps; an ensemble averages several models: `medclf "
                         "explain` draws their Grad-CAM)")
    features = pool.input
    if tuple(features.shape[1:3]) == (1, 1):  # every heatmap drawn from it would be one colour
        raise ValueError(f"--cam: model {model.name}'s last feature map is 1x1 at its input size "
                         f"({model.input_shape[1]}x{model.input_shape[2]}): no heatmap can be drawn from it")
    return features, head


def _producer(model: keras.Model, tensor: keras.KerasTensor) -> keras.layers.Layer | None:
    """The layer of ``model`` whose output ``tensor`` is, or None."""
    return next((layer for layer in model.layers if layer.output is tensor), None)


def _exact_resize_scales(proto: onnx.ModelProto) -> None:
    """Make every fixed-size Resize come out at the same size in every runtime.

    tf2onnx writes a resize to a fixed size (an ensemble member's 352 → 224 px) as a Resize with constant
    ``scales``: 224/352 is 0.6363636 in float32, and ONNX's rule, floor(352 × 0.6363636), gives 223. onnxruntime's
    kernel makes 224, as Keras did, but its shape inference follows the rule and warns on every load that the
    shapes disagree, and a runtime that sizes by the rule (TensorRT) would feed the member a 223-px image. Each
    such scale is raised to the next float32 at which the rule gives the intended size: a change of 1e-7, which
    moves the pixels sampled by under 1e-4 of a pixel."""
    constants = {tensor.name: tensor for tensor in proto.graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    dims = {value.name: [d.dim_value or None for d in value.type.tensor_type.shape.dim]
            for value in (*inferred.input, *inferred.value_info)}
    replaced = set()
    for node in proto.graph.node:
        if node.op_type != "Resize" or len(node.input) < 3 or node.input[2] not in constants:
            continue
        sizes = dims.get(node.input[0])
        scales = numpy_helper.to_array(constants[node.input[2]]).astype(np.float32)
        if not sizes or len(sizes) != len(scales):
            continue
        exact = np.array([_exact_scale(size, scale) for size, scale in zip(sizes, scales)], np.float32)
        if not np.array_equal(exact, scales):
            replaced.add(node.input[2])
            node.input[2] = f"{node.input[2]}_exact_{node.name}"
            proto.graph.initializer.append(numpy_helper.from_array(exact, node.input[2]))
    used = {name for node in proto.graph.node for name in node.input}
    for name in replaced - used:
        proto.graph.initializer.remove(constants[name])


def _exact_scale(size: int | None, scale: np.float32) -> np.float32:
    """``scale``, or the next float32 up at which floor(size × scale) reaches the integer size × scale was meant
    to be (within 1e-3 of it); unchanged where the dimension is unknown or the product no near-integer."""
    wanted = round(float(size or 0) * float(scale))
    if not size or abs(size * float(scale) - wanted) > 1e-3:
        return scale
    while math.floor(size * float(scale)) < wanted:  # ONNX's rule multiplies in double precision
        scale = np.nextafter(scale, np.float32(np.inf))
    return scale


def _rename_io(proto: onnx.ModelProto, outputs: list[str]) -> None:
    """tf2onnx keeps TensorFlow's tensor names (``image:0``, ``Identity:0``); give them the contract's names,
    ``outputs`` in the order the function returned them."""
    renames = {proto.graph.input[0].name: INPUT_NAME} | {
        value.name: name for value, name in zip(proto.graph.output, outputs, strict=True)}
    for value in (*proto.graph.input, *proto.graph.output):
        value.name = renames.get(value.name, value.name)
    for node in proto.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
