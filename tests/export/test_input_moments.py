"""A convolution's patch moments predict exactly how far any change of its weights moves its outputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnxruntime import InferenceSession

from medclf.export.fp16 import compensated_rounding
from medclf.export.input_moments import conv_patch_moments
from tests.onnx_graphs import ArrayReader

CONVS = {  # name: (input channels, Conv attributes)
    "3x3, 2 groups, padded": (4, {"group": 2, "pads": [1, 1, 1, 1]}),
    "3x3 depthwise, stride 2, padded on one side": (4, {"group": 4, "strides": [2, 2], "pads": [0, 0, 1, 1]}),
    "3x3, dilated": (3, {"dilations": [2, 2]}),
    "3x3, SAME_UPPER, stride 2": (3, {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    "1x1": (5, {}),
}


def conv(weight: np.ndarray, bias: np.ndarray, **attributes) -> onnx.ModelProto:
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", kernel_shape=list(weight.shape[2:]),
                            **attributes)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def outputs(model: onnx.ModelProto, batches: list[np.ndarray]) -> np.ndarray:
    session = InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"x": batch})[0] for batch in batches])


@pytest.mark.parametrize("name", CONVS)
def test_moments_give_each_output_channels_mean_square_change(name):
    """For any ``Δw``, ``Δb``: the output's change², averaged over images and positions, is
    ``[Δb, Δw] M [Δb, Δw]ᵀ`` — which holds only if the patches are the ones the convolution reads (padding,
    strides, groups, dilation)."""
    channels, attributes = CONVS[name]
    rng = np.random.default_rng(0)
    group = attributes.get("group", 1)
    size = 1 if name == "1x1" else 3
    weight = rng.normal(0, 1, (4, channels // group, size, size)).astype(np.float32)
    bias = rng.normal(0, 1, len(weight)).astype(np.float32)
    batches = [rng.uniform(0, 6, (3, channels, 8, 8)).astype(np.float32) for _ in range(2)]
    moments = conv_patch_moments(conv(weight, bias, **attributes), ArrayReader(batches), positions_per_image=10_000)
    (key,) = moments
    change_w = rng.normal(0, 0.01, weight.shape).astype(np.float32)
    change_b = rng.normal(0, 0.01, bias.shape).astype(np.float32)
    moved = outputs(conv(weight + change_w, bias + change_b, **attributes), batches) - outputs(
        conv(weight, bias, **attributes), batches)
    measured = (moved.astype(np.float64) ** 2).mean(axis=(0, 2, 3))
    per_group = len(weight) // group
    changes = np.concatenate([change_b[:, None], change_w.reshape(len(weight), -1)], axis=1)
    predicted = [changes[o] @ moments[key][o // per_group] @ changes[o] for o in range(len(weight))]
    np.testing.assert_allclose(predicted, measured, rtol=1e-4)


def test_large_inputs_are_sampled_and_the_moments_stay_close():
    """Every few rows and columns of a large input give nearly the moments of all of them."""
    rng = np.random.default_rng(1)
    weight, bias = rng.normal(0, 1, (2, 3, 3, 3)).astype(np.float32), np.zeros(2, np.float32)
    smooth = np.cumsum(np.cumsum(rng.normal(0, 1, (4, 3, 64, 64)), axis=2), axis=3) / 64
    batches = [smooth.astype(np.float32)]
    model = conv(weight, bias, pads=[1, 1, 1, 1])
    (full,) = conv_patch_moments(model, ArrayReader(batches), positions_per_image=10_000).values()
    (sampled,) = conv_patch_moments(model, ArrayReader(batches), positions_per_image=256).values()
    assert np.abs(sampled - full).max() < 0.1 * np.abs(full).max()


def test_convolutions_other_than_2d_get_no_moments_and_keep_their_weights():
    """1-D (or 3-D) convolutions are left to the float16 converter's nearest rounding."""
    rng = np.random.default_rng(2)
    weight, bias = rng.normal(0, 1, (2, 3, 3)).astype(np.float32), np.zeros(2, np.float32)
    model = conv(weight, bias)
    assert conv_patch_moments(model, ArrayReader([rng.normal(0, 1, (2, 3, 8)).astype(np.float32)])) == {}
    rounded = compensated_rounding(model, {}, skip=set())
    (kept,) = [numpy_helper.to_array(i) for i in rounded.graph.initializer if len(i.dims) == 3]
    assert np.array_equal(kept, weight)
