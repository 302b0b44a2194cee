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
