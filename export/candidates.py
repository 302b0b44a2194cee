"""A precision's candidate file, made from the FP32 one, and its probabilities as its hardware computes them.

Candidates are written beside the FP32 file in export's private work folder; only verification moves one to its
final name (:mod:`.pipeline`).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import onnx

from medclf.runtime.cpu import VERIFIED_ON, this_cpu
from medclf.runtime.modelcard import ModelCard

from .files import FILE_NAMES, TENSORRT_FLAVOUR
from .fp16 import Fp16Converter, with_float16_activations
from .int8 import Int8Quantizer
from .verify import onnx_probabilities

FLOAT16_ACTIVATIONS = "float16 activations, as a GPU computes the file"  # how FP16 is verified (judged_probabilities)
Converters = dict[str, Fp16Converter | Int8Quantizer]  # by precision: what makes its file from the FP32 one


def derive(precision: str, fp32: Path, card: ModelCard, converters: Converters | None = None,
           for_tensorrt: bool = False, float_convs: int = 1) -> Path:
    """The candidate file for ``precision``, next to the FP32 one, stamped with its own model card, its first
    ``float_convs`` convolutions kept float32, made by ``converters[precision]`` (:func:`~.pipeline._converters`);
    ``for_tensorrt``: the symmetric INT8 flavour TensorRT engines are built from (see :mod:`.int8`), on the
    same images as the published onnxruntime one."""
    if precision == "fp32":
        return fp32
    target = fp32.with_name(FILE_NAMES[precision] if not for_tensorrt else TENSORRT_FLAVOUR[precision])
    if precision == "fp16":
        proto = converters["fp16"].convert(fp32, float_convs)
    else:  # verified on this CPU: the runtime warns when a CPU without int8 dot products serves it
        proto = converters["int8"].quantize(fp32, for_tensorrt, float_convs)
        card = dataclasses.replace(card, metrics=card.metrics | {VERIFIED_ON: this_cpu()})
    save(proto, dataclasses.replace(card, precision=precision), target)
    return target


def judged_probabilities(candidate: Path, images: np.ndarray, precision: str) -> np.ndarray:
    """``candidate``'s probabilities as the hardware its precision is for computes them: an FP16 file with
    float16 activations (:func:`~.fp16.with_float16_activations`), where onnxruntime's CPU would keep them
    float32 and hide their rounding and overflow; the others as onnxruntime runs them here."""
    if precision != "fp16":
        return onnx_probabilities(str(candidate), images)
    with tempfile.TemporaryDirectory() as tmp:
        emulated = Path(tmp) / candidate.name
        onnx.save(with_float16_activations(onnx.load(str(candidate))), str(emulated))
        return onnx_probabilities(str(emulated), images)


def save(proto: onnx.ModelProto, card: ModelCard, path: Path) -> None:
    onnx.helper.set_model_props(proto, card.to_metadata())
    onnx.save(proto, str(path))
