"""The names ``medclf export`` gives its files, one per precision (no TensorFlow here: the ONNX-only benchmark
finds a model's siblings by them), and the model card of a file found under one."""

from __future__ import annotations

import os

from medclf.runtime.modelcard import ModelCard

FILE_NAMES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
# INT8's symmetric flavour, which TensorRT engines are built from (TensorRT reads only zero-point-0 QDQ),
# published beside its engine so that the runtime can be given the very file the engine came from
TENSORRT_FLAVOUR = {"int8": "model.int8.tensorrt.onnx"}


def card_of_file(path: str | os.PathLike[str]) -> ModelCard | None:
    """The medclf model card of the ONNX file at ``path`` (its weights not read), or None: absent, not ONNX, no
    medclf card, a damaged one — nothing medclf knows as its own, which is left alone."""
    import onnx  # here: the benchmark of an exported file finds siblings by name alone

    try:
        return ModelCard.from_proto(onnx.load(str(path), load_external_data=False), str(path))
    except Exception:  # onnx and the card raise many kinds for files that are not what they should be
        return None
