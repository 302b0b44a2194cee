"""Which nodes the INT8 file keeps float: counted along each backbone, not by their place in the file."""

from __future__ import annotations

from medclf.export.int8 import _float_nodes

from .test_output_nodes import two_backbones


def test_each_backbone_keeps_its_own_leading_convolutions_and_its_own_tail_float():
    """The second backbone's input convolution, the most sensitive one, was quantized: the float prefix was
    counted in file order and ended inside the first backbone."""
    floats = set(_float_nodes(two_backbones(), float_convs=1))
    assert {"normalize", "a_conv1", "a_relu1", "b_conv1", "b_relu1"} <= floats
    assert not floats & {"a_conv2", "a_relu2", "b_conv2", "b_relu2", "a_conv3", "b_conv3"}
    assert {"a_pool", "b_pool", "concat", "flatten", "head"} <= floats  # after each branch's last convolution
    assert {"a_conv2", "b_conv2"} <= set(_float_nodes(two_backbones(), float_convs=2))


def test_a_float_convolutions_activation_stays_float_wherever_the_file_lists_it():
    """Found by place, an activation listed away from its convolution (the unfamiliarity output's nodes sit
    between them in the packaged model; two backbones' interleave) was quantized after a float convolution."""
    from onnx import helper

    model = two_backbones()
    between = next(i for i, node in enumerate(model.graph.node) if node.name == "a_conv1") + 1
    model.graph.node.insert(between, helper.make_node("Identity", ["x"], ["x_too"], name="another_outputs_node"))
    assert {"a_conv1", "a_relu1", "b_conv1", "b_relu1"} <= set(_float_nodes(model, float_convs=1))


def test_calibration_images_none_of_which_can_be_read_are_said_so_before_onnxruntime_calibrates(tmp_path):
    """onnxruntime's calibrator given no batch fails on empty ranges, saying nothing of the images."""
    import pytest

    from medclf.export.int8 import ImageCalibrationReader
    from medclf.runtime.preprocess import Preprocess

    notes = [tmp_path / f"scan{n}.jpg" for n in range(3)]
    for note in notes:
        note.write_text("not an image")
    reader = ImageCalibrationReader(notes, Preprocess(height=32, width=32))
    with pytest.raises(FileNotFoundError, match="none of the 3 calibration images could be read"):
        reader.get_next()
