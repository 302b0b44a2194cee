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
from medclf.runtime.modelcard import INPUT_NAME, OUTPUT_NAME, ModelCard

OPSET = 17


def convert(model: keras.Model, card: ModelCard, opset: int = OPSET) -> onnx.ModelProto:
    """The inference graph: input ``image`` uint8 NHWC (dynamic batch), output ``probabilities`` float32."""
    spec = tf.TensorSpec((None, *card.preprocess.shape), tf.uint8, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def serve(image: tf.Tensor) -> tf.Tensor:
        return tf.identity(model(tf.cast(image, tf.float32), training=False), name=OUTPUT_NAME)

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


def _rename_io(proto: onnx.ModelProto) -> None:
    """tf2onnx keeps TensorFlow's tensor names (``image:0``, ``Identity:0``); give them the contract's names."""
    renames = {proto.graph.input[0].name: INPUT_NAME, proto.graph.output[0].name: OUTPUT_NAME}
    for value in (*proto.graph.input, *proto.graph.output):
        value.name = renames.get(value.name, value.name)
    for node in proto.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
