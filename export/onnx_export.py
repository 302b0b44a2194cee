"""Keras model → ONNX graph that takes uint8 pixels and carries its model card. Conversion only; no checks.

Keras' own ``model.export`` traces the model as called in training, so live augmentation and training-mode
batch norm can end up in the graph; tracing a ``training=False`` wrapper with ``tf2onnx.convert.from_function``
gives exactly the inference graph, with the uint8 → float32 cast as its first node.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone
from pathlib import Path

import keras
import onnx
import tensorflow as tf
import tf2onnx

import medclf
from medclf.runtime.modelcard import CAM_NAME, INPUT_NAME, OUTPUT_NAME, ModelCard

OPSET = 17


CAM_DESCRIPTION = ("class activation maps [batch, h, w, classes]: the last feature map weighted by the classifier's "
                   "weights plus its bias (Zhou et al. 2016); their spatial mean is the logits")


def convert(model: keras.Model, card: ModelCard, opset: int = OPSET, cam: bool = False) -> onnx.ModelProto:
    """The inference graph: input ``image`` uint8 NHWC (dynamic batch), output ``probabilities`` float32 and, with
    ``cam``, a second output ``cam`` (see :data:`CAM_DESCRIPTION`) the runtime draws heatmaps from."""
    spec = tf.TensorSpec((None, *card.preprocess.shape), tf.uint8, name=INPUT_NAME)
    features_and_probabilities = _with_features(model) if cam else None

    @tf.function(input_signature=[spec])
    def serve(image: tf.Tensor):
        x = tf.cast(image, tf.float32)
        if features_and_probabilities is None:
            return tf.identity(model(x, training=False), name=OUTPUT_NAME)
        features, probabilities = features_and_probabilities(x, training=False)
        head = model.get_layer("probabilities")
        maps = tf.einsum("nhwk,kc->nhwc", features, head.kernel) + head.bias
        return tf.identity(probabilities, name=OUTPUT_NAME), tf.identity(maps, name=CAM_NAME)

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=[spec], opset=opset)
    _rename_io(proto)
    onnx.helper.set_model_props(proto, card.to_metadata())
    proto.producer_name = "medclf"
    proto.producer_version = medclf.__version__
    onnx.checker.check_model(proto)
    return proto


def provenance(keras_path: str | os.PathLike[str], opset: int = OPSET) -> dict[str, str]:
    """Where an export came from: the Keras file's hash, the tools' versions, the date."""
    return {
        "keras_model": Path(keras_path).name,
        "keras_sha256": hashlib.sha256(Path(keras_path).read_bytes()).hexdigest(),
        "medclf_version": medclf.__version__,
        "tensorflow_version": tf.__version__,
        "tf2onnx_version": tf2onnx.__version__,
        "opset": str(opset),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _with_features(model: keras.Model) -> keras.Model:
    """``image → (last feature map, probabilities)`` for a registry model whose head is the exact CAM form:
    feature map → global average pool → (dropout) → dense softmax named ``probabilities``."""
    names = {layer.name for layer in model.layers}
    if not {"pool", "probabilities"} <= names or \
            not isinstance(model.get_layer("pool"), keras.layers.GlobalAveragePooling2D):
        raise ValueError(f"model {model.name} has no feature map → average pool → dense head; a CAM output "
                         f"needs one (two_backbones pools two maps)")
    return keras.Model(model.input, [model.get_layer("pool").input, model.output])


def _rename_io(proto: onnx.ModelProto) -> None:
    """tf2onnx keeps TensorFlow's tensor names (``image:0``, ``Identity:0``); give them the contract's names."""
    renames = {proto.graph.input[0].name: INPUT_NAME, proto.graph.output[0].name: OUTPUT_NAME}
    if len(proto.graph.output) > 1:
        renames[proto.graph.output[1].name] = CAM_NAME
    for value in (*proto.graph.input, *proto.graph.output):
        value.name = renames.get(value.name, value.name)
    for node in proto.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
