"""FP16 files: compensated float16 rounding helps every architecture in the registry and never costs one, and
verification sees them as a GPU computes them — float16 activations, their rounding and their overflow — where
onnxruntime's CPU computes them in float32."""

from __future__ import annotations

import keras
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime import InferenceSession

from medclf.export.fp16 import centred_input, to_fp16, with_float16_activations
from medclf.export.input_moments import conv_patch_moments
from medclf.export.int8 import ImageCalibrationReader
from medclf.export.onnx_export import convert
from medclf.export.simplify import simplify
from medclf.export.verify import TOLERANCES, compare
from medclf.runtime import DEFAULT_MODEL, ModelCard, load_image
from medclf.runtime.preprocess import Preprocess
from medclf.train.architectures import ARCHITECTURES, get_architecture
from tests.conftest import needs_weights

PREPROCESS = Preprocess(64, 64)
IMAGENET = {"mobilenet_v2", "mobilenet_025", "two_backbones"}


def probabilities(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    session = InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": images})[0]


@pytest.mark.parametrize("name", [pytest.param(n, marks=needs_weights) if n in IMAGENET else n
                                  for n in sorted(ARCHITECTURES)])
def test_compensated_rounding_moves_unseen_images_less_than_nearest(name, blood_cells):
    """Each architecture as export sees it (ImageNet weights where it has them, a random head, onnxslim's
    folding), moments on 64 training smears, changes measured on 64 test smears. Measured (median |Δp|,
    compensated / nearest), as onnxruntime's CPU computes the files (the weights' rounding alone, which is what
    compensation addresses): ImageNet backbones 0.22-0.28, SqueezeNet 0.5, the small CNN 1.02. With float16
    activations too, as verification and GPUs compute them, it must never cost: ImageNet backbones 0.40-0.62 on
    the AMD EPYC, but 0.44 (MobileNetV2) and 0.85 (MobileNet 0.25) on an Intel Xeon with AVX512-FP16, where the
    activations' own error is most of it; 1.0 for the two small random networks, whose whole float16 error
    (1e-4) is their activations'."""
    keras.utils.set_random_seed(0)
    model = get_architecture(name).build((*PREPROCESS.shape[:2], 3), 4, name in IMAGENET)
    train = sorted(p for c in (blood_cells / "TRAIN").iterdir() for p in c.iterdir())[::150][:64]
    test = np.stack([load_image(p, PREPROCESS)
                     for p in sorted(p for c in (blood_cells / "TEST").iterdir() for p in c.iterdir())[::39][:64]])
    fp32, _ = simplify(convert(model, ModelCard(labels=("a", "b", "c", "d"), preprocess=PREPROCESS)), test[:8])
    reference = probabilities(fp32, test)
    moments = conv_patch_moments(fp32, ImageCalibrationReader(train, PREPROCESS))
    def change(model: onnx.ModelProto) -> float:
        return float(np.median(np.abs(probabilities(model, test) - reference).max(axis=1)))
    for computed in (lambda model: model, with_float16_activations):
        compensated = change(computed(to_fp16(fp32, moments=moments)))
        nearest = change(computed(to_fp16(fp32)))
        assert compensated <= 1.1 * nearest
        if name in IMAGENET and computed is not with_float16_activations:
            assert compensated < 0.7 * nearest


@needs_weights
def test_the_input_normalisation_is_centred_so_float16_rounds_nothing_before_the_first_convolution(blood_cells):
    """MobileNetV2's x / 127.5 - 1 in float16 rounds values near 1 before the 1 is taken off; x - 127.5 is exact
    for every pixel, and the 1 / 127.5 goes into the first convolution's weights: the same function."""
    keras.utils.set_random_seed(0)
    model = get_architecture("mobilenet_v2").build((*PREPROCESS.shape[:2], 3), 4, True)
    test = np.stack([load_image(p, PREPROCESS)
                     for p in sorted(p for c in (blood_cells / "TEST").iterdir() for p in c.iterdir())[::39][:64]])
    fp32, _ = simplify(convert(model, ModelCard(labels=("a", "b", "c", "d"), preprocess=PREPROCESS)), test[:8])
    centred = centred_input(fp32)
    reference = probabilities(fp32, test)
    np.testing.assert_allclose(probabilities(centred, test), reference, atol=1e-5)
    opening = [node.op_type for node in centred.graph.node][:centred_first_conv(centred) + 1]
    assert "Mul" not in opening and opening[:2] == ["Cast", "Add"]
    read = {name for node in centred.graph.node for name in node.input}
    assert all(tensor.name in read for tensor in centred.graph.initializer)  # onnxruntime warns of unused ones

    train = sorted(p for c in (blood_cells / "TRAIN").iterdir() for p in c.iterdir())[::150][:64]

    def change(model: onnx.ModelProto) -> float:  # with compensated rounding and float16 activations, as export
        moments = conv_patch_moments(model, ImageCalibrationReader(train, PREPROCESS))
        emulated = with_float16_activations(to_fp16(model, moments=moments))
        return float(np.median(np.abs(probabilities(emulated, test) - reference).max(axis=1)))
    assert change(centred) < change(fp32)
    no_convolution = scale_and_shift(0.0123, 0.3)
    assert centred_input(no_convolution) is no_convolution  # any other opening is left as it is


def test_the_input_is_centred_in_a_file_whose_unfamiliarity_output_reads_the_raw_pixels_too(blood_cell_images):
    """Every default export has that output, which reads the cast pixels beside the normalisation: the rewrite
    took the second reader for a graph it did not know and left every such file as it was."""
    packaged = onnx.load(str(DEFAULT_MODEL))
    images = np.stack([load_image(p, ModelCard.from_proto(packaged, "m").preprocess) for p in blood_cell_images])
    centred = centred_input(packaged)
    assert centred is not packaged and "Mul" not in [n.op_type for n in centred.graph.node][:3]
    np.testing.assert_allclose(probabilities(centred, images), probabilities(packaged, images), atol=1e-5)


def centred_first_conv(model: onnx.ModelProto) -> int:
    return next(i for i, node in enumerate(model.graph.node) if node.op_type == "Conv")


def scale_and_shift(scale: float, shift: float, then: float = 1.0) -> onnx.ModelProto:
    """``image`` (uint8 [N, 3]) → float, × ``scale``, + ``shift``, × ``then``, softmax → ``probabilities``."""
    nodes = [helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "scale"], ["scaled"]),
             helper.make_node("Add", ["scaled", "shift"], ["shifted"]),
             helper.make_node("Mul", ["shifted", "then"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]
    constants = [numpy_helper.from_array(np.array([value], np.float32), name)
                 for name, value in (("scale", scale), ("shift", shift), ("then", then))]
    graph = helper.make_graph(nodes, "scale_and_shift",
                              [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 3])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
                              constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_float16_activations_round_every_tensor_a_gpu_holds_in_float16_where_the_cpu_keeps_float32():
    images = np.arange(255, dtype=np.uint8).reshape(85, 3)
    fp16 = to_fp16(scale_and_shift(0.0123, 0.3))
    half = np.float16
    x = images.astype(half)  # every step rounded to float16, computed in float32 (as GPU kernels accumulate)
    scaled = (x.astype(np.float32) * np.float32(half(0.0123))).astype(half)
    logits = (scaled.astype(np.float32) + np.float32(half(0.3))).astype(half)
    exp = np.exp(logits.astype(np.float32) - logits.astype(np.float32).max(axis=1, keepdims=True))
    expected = (exp / exp.sum(axis=1, keepdims=True)).astype(half).astype(np.float32)
    np.testing.assert_allclose(probabilities(with_float16_activations(fp16), images), expected, rtol=0, atol=1e-7)
    weights_alone = images * np.float32(half(0.0123)) + np.float32(half(0.3))  # what onnxruntime's CPU computes
    exp = np.exp(weights_alone - weights_alone.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probabilities(fp16, images), exp / exp.sum(axis=1, keepdims=True), rtol=1e-6)
    assert np.abs(probabilities(fp16, images) - expected).max() > 1e-4


def test_an_activation_past_float16s_range_fails_verification_though_the_cpu_computes_the_file_fine():
    """× 1000 takes a pixel of 255 to 255,000, beyond float16's 65,504: a GPU's answer is NaN."""
    images = np.array([[255, 0, 128], [3, 200, 9]], np.uint8)
    fp32 = scale_and_shift(1000.0, 0.0, then=1e-4)
    fp16 = to_fp16(fp32)
    reference = probabilities(fp32, images)
    assert compare(reference, probabilities(fp16, images), TOLERANCES["fp16"]).passed
    failures = compare(reference, probabilities(with_float16_activations(fp16), images), TOLERANCES["fp16"]).failures
    assert "outputs contain NaN or infinity" in failures
